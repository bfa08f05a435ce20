"""Reads and searches on the CDS client's FHIR server, on behalf of one hook call.

- One `requests.Session` per process (connection pooling), passed in so tests can plug in another.
- One deadline for all of a call's FHIR access (``CDS_FHIR_DEADLINE_MS``): a `FhirClient` is made per
  call and every request it sends, every page and every key fetched in parallel share it; each
  request's connect/read timeout is the smaller of its own and the time left, and a body is read in
  chunks with the deadline checked between them.
- Redirects are never followed (a token must never travel to a host nobody allowed, and a redirect
  within the allowlist is no more trustworthy than the server that sent it): a 3xx is an unusable answer.
- `next` links are followed up to a page cap, and each must be allowlisted too; a search the server cut
  short (``total`` above what it sent, no `next` link) is refused like a capped one: partial data is
  never acted on as if it were complete.
- Only servers matching ``CDS_FHIR_ALLOWED_SERVERS`` are contacted; for any other `fhirServer`, no
  request leaves the service.
- The access token lives only in this object for the duration of the call: it is never logged,
  never put in an exception message, never stored. Messages name the host, never a path or query
  (they carry patient ids).

Exceptions (all `FhirAccessError`, itself a `PrefetchUnavailable`, so HTTP 412 by default)::

    FhirAccessError
    ├── FhirServerNotAllowed   fhirServer (or a next link) is outside the allowlist
    ├── FhirUnreachable        connection refused, DNS failure, timeout
    ├── FhirDeadlineExceeded   the call's FHIR deadline ran out
    ├── FhirAuthRejected       401 / 403
    ├── FhirNotFound           404 on a read
    └── FhirBadResponse        other non-2xx (redirects included), non-JSON, not the resource or
        │                      Bundle asked for, too large, a malformed next link
        └── FhirIncomplete     the page cap was reached, or the server cut the search short
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..errors import PrefetchUnavailable, clip
from ..json_input import JsonInputError, parse_json
from ..telemetry import metrics

log = logging.getLogger(__name__)


class FhirAccessError(PrefetchUnavailable):
    reason = "FHIR server error"


class FhirServerNotAllowed(FhirAccessError):
    reason = "FHIR server not in CDS_FHIR_ALLOWED_SERVERS"


class FhirUnreachable(FhirAccessError):
    reason = "FHIR server unreachable"


class FhirAuthRejected(FhirAccessError):
    reason = "FHIR server rejected the access token"


class FhirNotFound(FhirAccessError):
    reason = "resource not found"


class FhirDeadlineExceeded(FhirAccessError):
    reason = "the call's FHIR deadline was reached (CDS_FHIR_DEADLINE_MS)"


class FhirBadResponse(FhirAccessError):
    reason = "FHIR server gave an unusable answer"


class FhirIncomplete(FhirBadResponse):
    reason = "search results incomplete"


def _normalise_base(url: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default_port = 443 if parts.scheme == "https" else 80
    path = parts.path.rstrip("/")
    return parts.scheme, parts.hostname.lower(), port or default_port, path


class ServerAllowlist:
    """Base-URL prefixes. A URL matches when scheme, host and port are equal and its path starts at a
    segment boundary of the prefix path (``https://h/fhir`` allows ``https://h/fhir/Patient/1`` but not
    ``https://h/fhir-other`` nor ``https://h.evil.example/fhir``)."""

    def __init__(self, prefixes: tuple[str, ...] | list[str]):
        self._prefixes = []
        for prefix in prefixes:
            norm = _normalise_base(prefix)
            if norm is None:
                raise ValueError(f"CDS_FHIR_ALLOWED_SERVERS: not an http(s) base URL: {prefix!r}")
            self._prefixes.append(norm)

    def permits(self, url: str) -> bool:
        norm = _normalise_base(url)
        if norm is None:
            return False
        scheme, host, port, path = norm
        for p_scheme, p_host, p_port, p_path in self._prefixes:
            if (scheme, host, port) == (p_scheme, p_host, p_port) and (
                path == p_path or path.startswith(p_path + "/")
            ):
                return True
        return False


@dataclass(frozen=True)
class FetchLimits:
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_pages: int = 10
    max_response_bytes: int = 20_000_000
    deadline: float = 3.0  # seconds for all of one call's FHIR access (CDS_FHIR_DEADLINE_MS / 1000)


def new_session(pool_size: int = 16) -> requests.Session:
    """The process-wide HTTP session (built once in the app factory)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no ambient proxies or .netrc credentials for patient data
    # urllib3 logs each request line at DEBUG, query string and patient id included: keep it quieter.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.WARNING)
    return session


@dataclass(frozen=True)
class FhirAccess:
    """What every call's FHIR client shares: the pooled session, the allowlist and the limits."""

    session: requests.Session
    allowlist: ServerAllowlist
    limits: FetchLimits

    def client(
        self, fhir_server: str | None, access_token: str | None, *, started: float | None = None
    ) -> "FhirClient | None":
        """One client per hook call: the call's FHIR deadline starts at `started` (time.monotonic(), the
        request's arrival), else now."""
        if not fhir_server:
            return None
        return FhirClient(
            self.session,
            fhir_server,
            access_token=access_token,
            allowlist=self.allowlist,
            limits=self.limits,
            started=started,
        )


class FhirClient:
    """FHIR REST reads/searches against one server with one (optional) bearer token, for one hook call:
    its deadline starts when it is made (or at `started`) and covers every request it sends, from any
    thread."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        *,
        access_token: str | None,
        allowlist: ServerAllowlist,
        limits: FetchLimits = FetchLimits(),
        started: float | None = None,
    ):
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._allowlist = allowlist
        self.limits = limits
        self._expires = (time.monotonic() if started is None else started) + limits.deadline

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient(base_url={self.base_url!r})"

    @property
    def allowed(self) -> bool:
        return self._allowlist.permits(self.base_url)

    def remaining(self) -> float:
        """Seconds left of the call's FHIR deadline (zero or less once it has passed)."""
        return self._expires - time.monotonic()

    def url_for(self, relative: str) -> str:
        return _absolute(self.base_url + "/", relative.lstrip("/"), "the rendered prefetch query")

    def get(self, relative: str) -> tuple[list[dict], int, list[EntryProblem]]:
        """Run a rendered prefetch query. A read returns [resource] (or raises FhirNotFound); a search
        returns every entry resource across pages. Returns (resources, pages fetched, entries that held no
        resource, for the data screen to record)."""
        with metrics.fhir_fetch(relative):
            return self._get(relative)

    def _get(self, relative: str) -> tuple[list[dict], int, list[EntryProblem]]:
        url = self.url_for(relative)
        path, _, query = relative.partition("?")
        segments = path.strip("/").split("/")
        body = self._get_json(url)
        got = body["resourceType"]
        if not query and len(segments) == 2:  # a read, Type/id: that type and nothing else
            if got != segments[0]:
                raise FhirBadResponse(
                    f"{FhirBadResponse.reason}: asked for a {segments[0]}, got a {clip(got)}"
                )
            return [body], 1, []
        if got != "Bundle":
            if query:
                raise FhirBadResponse(
                    f"{FhirBadResponse.reason}: a {segments[0]} search answered a {clip(got)}, not a Bundle"
                )
            return [body], 1, []
        resources, pages, junk = self._pages(body, url, counted=1)
        return resources, pages + 1, junk

    def follow_pages(self, bundle: dict) -> tuple[list[dict], int, list[EntryProblem]]:
        """Complete a paginated searchset the client prefetched (spec: Example of Pagination)."""
        if next_link(bundle) is None:  # complete as sent: nothing is fetched
            return self._pages(bundle, self.base_url + "/", counted=0)
        entries, _ = bundle_entries(bundle)
        with metrics.fhir_fetch(str(entries[0][1].get("resourceType")) if entries else "Bundle"):
            return self._pages(bundle, self.base_url + "/", counted=0)

    def _pages(self, bundle: dict, base: str, counted: int) -> tuple[list[dict], int, list[EntryProblem]]:
        """The bundle's resources and those of every `next` page after it (each allowlisted), up to the
        page cap (`counted` pages already count against it): partial data is refused, never used.
        Returns (resources, further pages fetched, entries without a resource)."""
        total = bundle.get("total")
        entries, junk = bundle_entries(bundle)
        resources = [r for _, r in entries]
        matches = _match_count(bundle)
        pages = 0
        next_url = next_link(bundle)
        while next_url:
            if counted + pages >= self.limits.max_pages:
                raise FhirIncomplete(
                    f"page cap of {self.limits.max_pages} reached ({len(resources)} resources read, more "
                    "pages to go); refusing to act on partial data (CDS_FHIR_MAX_PAGES)"
                )
            bundle = self._get_json(_absolute(base, next_url, "a next link"))
            if bundle["resourceType"] != "Bundle":
                raise FhirBadResponse(
                    f"{FhirBadResponse.reason}: a next page is a {clip(bundle['resourceType'])}, not a Bundle"
                )
            pages += 1
            entries, page_junk = bundle_entries(bundle)
            resources.extend(r for _, r in entries)
            junk += [p._replace(path=f"page[{pages}].{p.path}") for p in page_junk]
            matches += _match_count(bundle)
            next_url = next_link(bundle)
        if isinstance(total, int) and not isinstance(total, bool) and total > matches:
            # Some servers cut a search at _count and send no next link (Medplum's in-memory router).
            raise FhirIncomplete(
                f"the server reported {total} matches but sent {matches} and no next link; "
                "refusing to act on partial data"
            )
        return resources, pages, junk

    def _get_json(self, url: str) -> dict:
        if not self._allowlist.permits(url):
            raise FhirServerNotAllowed(f"{FhirServerNotAllowed.reason}: {_host(url)}")
        left = self.remaining()
        if left <= 0:
            raise FhirDeadlineExceeded(f"{FhirDeadlineExceeded.reason}; no further request sent")
        headers = {"Accept": "application/fhir+json, application/json;q=0.9"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        # Each socket wait is bounded by what is left of the call's deadline, not only its own timeout.
        timeout = (min(self.limits.connect_timeout, left), min(self.limits.read_timeout, left))
        try:
            with self._session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            ) as response:
                status = response.status_code
                if status in (401, 403):
                    raise FhirAuthRejected(f"{FhirAuthRejected.reason} (HTTP {status})")
                if status == 404:
                    raise FhirNotFound(f"{FhirNotFound.reason} (HTTP 404)")
                if 300 <= status < 400:
                    raise FhirBadResponse(f"{FhirBadResponse.reason}: redirect (HTTP {status}) not followed")
                if not 200 <= status < 300:
                    raise FhirBadResponse(f"{FhirBadResponse.reason}: HTTP {status}")
                content = self._read_body(response)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise self._transport_error(exc, url) from exc
        except ValueError as exc:  # a URL that parses as a string but not as a request target
            raise FhirBadResponse(f"{FhirBadResponse.reason}: not a valid request URL") from exc
        try:  # the same rules as a client's body: UTF-8, finite numbers, no lone surrogates, bounded depth
            body = parse_json(content, where="the FHIR answer")
        except JsonInputError as exc:
            raise FhirBadResponse(
                f"{FhirBadResponse.reason}: body is not JSON it can read ({exc.diagnostics})"
            ) from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirBadResponse(f"{FhirBadResponse.reason}: body is not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise FhirBadResponse(f"{FhirBadResponse.reason}: OperationOutcome instead of data")
        return body

    def _read_body(self, response: requests.Response) -> bytes:
        """The body, read as it arrives (read1: no waiting for a full chunk), refused once it is larger
        than the cap or the deadline passes: a server that drips bytes cannot hold the call."""
        cap = self.limits.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise FhirBadResponse(f"response larger than {cap} bytes (CDS_FHIR_MAX_RESPONSE_BYTES)")
        chunks, size = [], 0
        while chunk := response.raw.read1(65536, decode_content=True):
            size += len(chunk)
            if size > cap:
                raise FhirBadResponse(f"response larger than {cap} bytes (CDS_FHIR_MAX_RESPONSE_BYTES)")
            chunks.append(chunk)
            if self.remaining() <= 0:
                raise FhirDeadlineExceeded(f"{FhirDeadlineExceeded.reason} while reading an answer")
        return b"".join(chunks)

    def _transport_error(self, exc: Exception, url: str) -> FhirAccessError:
        timed_out = isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)) or any(
            isinstance(arg, urllib3.exceptions.TimeoutError) for arg in exc.args
        )
        if timed_out and self.remaining() <= 0.05:
            return FhirDeadlineExceeded(f"{FhirDeadlineExceeded.reason} waiting for {_host(url)}")
        if timed_out:
            return FhirUnreachable(f"{FhirUnreachable.reason}: timed out ({_host(url)})")
        if isinstance(exc, requests.ConnectionError):
            return FhirUnreachable(f"{FhirUnreachable.reason}: could not connect ({_host(url)})")
        return FhirUnreachable(f"{FhirUnreachable.reason}: {type(exc).__name__} ({_host(url)})")


def _absolute(base: str, link: str, what: str) -> str:
    """`link` resolved against `base`; a link that is not a URL (``http://[::1``) is an unusable answer."""
    try:
        url = urljoin(base, link)
        urlsplit(url).port  # noqa: B018 - parsing the port is what raises for a malformed authority
    except ValueError as exc:
        raise FhirBadResponse(f"{FhirBadResponse.reason}: {what} is not a valid URL") from exc
    return url


def _match_count(bundle: dict) -> int:
    """Entries that stand for search matches (what `Bundle.total` counts): every entry but includes and
    outcomes. An unreadable entry still counts: it was sent (and is reported as junk), not withheld."""
    entries = bundle.get("entry")
    if isinstance(entries, dict):
        entries = [entries]
    count = 0
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            search, resource = entry.get("search"), entry.get("resource")
            if isinstance(search, dict) and search.get("mode") in ("include", "outcome"):
                continue
            if isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome":
                continue
        count += 1
    return count


def _host(url: str) -> str:
    """Host only: paths and queries carry patient ids, which stay out of messages and logs."""
    try:
        return urlsplit(url).netloc or "?"
    except ValueError:
        return "?"


def next_link(bundle: dict) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


class EntryProblem(NamedTuple):
    """A Bundle entry that held no resource (set aside), or a lone entry object read as a list."""

    path: str  # relative to the Bundle: entry[3], page[2].entry[0]
    why: str
    normalised: bool = False


def bundle_entries(bundle: dict) -> tuple[list[tuple[int, dict]], list[EntryProblem]]:
    """(position, resource) of each entry holding data, and the problem of each entry that holds none.

    Lenient with what a client or server sends: one entry object where a list is due is read as a
    one-item list; search outcomes (OperationOutcome) are not data and are skipped silently."""
    entries = bundle.get("entry")
    junk: list[EntryProblem] = []
    if entries is None:
        return [], junk
    if isinstance(entries, dict):
        entries = [entries]
        junk.append(EntryProblem("entry", "a single entry object read as a one-item list", normalised=True))
    elif not isinstance(entries, list):
        return [], [
            EntryProblem("entry", "Bundle.entry is not a list of entries: nothing in it could be read")
        ]
    out = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            junk.append(EntryProblem(f"entry[{i}]", "the entry holds no resource object"))
            continue
        search = entry.get("search")
        if (isinstance(search, dict) and search.get("mode") == "outcome") or resource.get(
            "resourceType"
        ) == "OperationOutcome":
            continue  # search warnings, not data
        out.append((i, resource))
    return out, junk
