"""A fake FHIR server over real HTTP on 127.0.0.1, for the fetch path.

Routes map "path?query" (as requested, relative to the base) to a handler result. It records every
request (path and headers) so tests can assert what left the service, and what did not.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class Reply:
    status: int = 200
    body: object = None
    delay: float = 0.0
    headers: dict = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    headers: dict


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
            def do_GET(self):
                path = unquote(self.path)
                server.seen.append(Seen(path, dict(self.headers)))
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
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/fhir+json")
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

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
