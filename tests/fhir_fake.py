"""A fake FHIR server over real HTTP on 127.0.0.1, for the fetch path.

Routes map "path?query" (as requested, relative to the base) to a handler result. It records every
request (path and headers) so tests can assert what left the service, and what did not. A reply can
be slow (`delay`), drip its body byte by byte (`drip`), or be anything at all (`body` as bytes).
`PagedSearch` answers searches over a list of resources the way a paging server does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode


@dataclass
class Reply:
    status: int = 200
    body: object = None
    delay: float = 0.0
    headers: dict = field(default_factory=dict)
    drip: float = 0.0  # seconds between body bytes (a server that trickles its answer)
    drip_headers: bool = False  # trickle the status line and headers too


@dataclass
class Seen:
    path: str
    headers: dict
    body: bytes = b""  # a POST's body


class FakeFhirServer:
    def __init__(self, base_path: str = "/fhir"):
        self.base_path = base_path
        self.routes: dict[str, Reply | Callable[[str], Reply]] = {}
        self.seen: list[Seen] = []
        self.default = Reply(
            404,
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found", "diagnostics": "no route"}],
            },
        )
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # a transaction Bundle to the base (cds-service fhir load), routed like a GET
                self.do_GET(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def do_GET(self, body: bytes = b""):
                path = unquote(self.path)
                server.seen.append(Seen(path, dict(self.headers), body))
                relative = (
                    path[len(server.base_path) + 1 :] if path.startswith(server.base_path + "/") else path
                )
                reply = server.routes.get(relative, server.default)
                if callable(reply):
                    reply = reply(relative)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body if isinstance(reply.body, (bytes, str)) else json.dumps(reply.body)
                data = payload.encode() if isinstance(payload, str) else payload
                try:
                    if reply.drip_headers:
                        head = (
                            f"HTTP/1.1 {reply.status} OK\r\nContent-Type: application/fhir+json\r\n"
                            f"Content-Length: {len(data)}\r\n\r\n"
                        ).encode()
                        for i in range(len(head)):
                            self.wfile.write(head[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.drip)
                    else:
                        self.send_response(reply.status)
                        self.send_header("Content-Type", "application/fhir+json")
                        for key, value in reply.headers.items():
                            self.send_header(key, value)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                    if reply.drip:
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.drip)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # stop() must not wait for a reply still sleeping or dripping
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{self.base_path}"

    def start(self) -> "FakeFhirServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def searchset(resources: list[dict], next_url: str | None = None) -> dict:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


# The date each resource type's `date`-like search parameter reads, for PagedSearch's `ge` filter.
_DATE_OF = {
    "Encounter": lambda r: (r.get("period") or {}).get("start"),
    "Observation": lambda r: r.get("effectiveDateTime"),
    "Procedure": lambda r: r.get("performedDateTime"),
    "MedicationRequest": lambda r: r.get("authoredOn"),
    "MedicationDispense": lambda r: r.get("whenHandedOver"),
}
_DATE_PARAMS = {"date", "authoredon", "whenhandedover"}


@dataclass
class PagedSearch:
    """Answers `Type?subject=...` searches over `resources` like a server that pages: `_count` (else
    `default_count`, at most `max_count`) per page, `next` links to `Type?...&_offset=N`. Understands
    `subject`/`patient`, `status` and `ge` dates; ignores other parameters (a superset is still
    correct data for the rules, which filter again)."""

    base_url: str
    resources: list[dict]
    default_count: int = 20
    max_count: int = 200
    requests: list[str] = field(default_factory=list)

    def __call__(self, relative: str) -> Reply:
        self.requests.append(relative)
        rtype, _, query = relative.partition("?")
        params = dict(parse_qsl(query))
        matches = [r for r in self.resources if r["resourceType"] == rtype and self._matches(r, params)]
        count = min(int(params.get("_count", self.default_count)), self.max_count)
        offset = int(params.get("_offset", 0))
        page = matches[offset : offset + count]
        bundle = searchset(page)
        bundle["total"] = len(matches)
        if offset + count < len(matches):
            following = urlencode({**params, "_offset": offset + count}, safe="/|:")
            bundle["link"] = [{"relation": "next", "url": f"{self.base_url}/{rtype}?{following}"}]
        return Reply(200, bundle)

    @staticmethod
    def _matches(resource: dict, params: dict) -> bool:
        for name, value in params.items():
            if name in ("subject", "patient"):
                ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
                if ref != value:
                    return False
            elif name == "status" and resource.get("status") != value:
                return False
            elif name in _DATE_PARAMS and value.startswith("ge"):
                when = _DATE_OF.get(resource["resourceType"], lambda r: None)(resource)
                if not when or when[:10] < value[2:12]:
                    return False
        return True
