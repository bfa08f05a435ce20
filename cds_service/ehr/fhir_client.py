"""Reads and searches on the CDS client's FHIR server, on behalf of one hook call.

- One `requests.Session` per process (connection pooling), passed in so tests can plug in another.
- Connect/read timeouts on every call; redirects are not followed (a token must never travel to a
  host nobody allowed); `next` links are followed up to a bound, and each must be allowlisted too.
- Only servers matching ``CDS_FHIR_ALLOWED_SERVERS`` are contacted; for any other `fhirServer`, no
  request leaves the service.
- The access token lives only in this object for the duration of the call: it is never logged,
  never put in an exception message, never stored.

Exceptions (all `FhirAccessError`, itself a `PrefetchUnavailable`, so HTTP 412 by default)::

    FhirAccessError
    ├── FhirServerNotAllowed   fhirServer (or a next link) is outside the allowlist
    ├── FhirUnreachable        connection refused, DNS failure, timeout
    ├── FhirAuthRejected       401 / 403
    ├── FhirNotFound           404 on a read
    └── FhirBadResponse        other non-2xx, non-JSON, not a FHIR resource, too large, too many pages
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import PrefetchUnavailable

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


class FhirBadResponse(FhirAccessError):
    reason = "FHIR server gave an unusable answer"


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


def new_session(pool_size: int = 16) -> requests.Session:
    """The process-wide HTTP session (built once in the app factory)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no ambient proxies or .netrc credentials for patient data
    return session


@dataclass(frozen=True)
class FhirAccess:
    """What every call's FHIR client shares: the pooled session, the allowlist and the limits."""

    session: requests.Session
    allowlist: ServerAllowlist
    limits: FetchLimits

    def client(self, fhir_server: str | None, access_token: str | None) -> "FhirClient | None":
        if not fhir_server:
            return None
        return FhirClient(
            self.session, fhir_server, access_token=access_token, allowlist=self.allowlist, limits=self.limits
        )


class FhirClient:
    """FHIR REST reads/searches against one server with one (optional) bearer token."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        *,
        access_token: str | None,
        allowlist: ServerAllowlist,
        limits: FetchLimits = FetchLimits(),
    ):
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._allowlist = allowlist
        self.limits = limits

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient(base_url={self.base_url!r})"

    @property
    def allowed(self) -> bool:
        return self._allowlist.permits(self.base_url)

    def url_for(self, relative: str) -> str:
        return urljoin(self.base_url + "/", relative.lstrip("/"))

    def get(self, relative: str) -> tuple[list[dict], int]:
        """Run a rendered prefetch query. A read returns [resource] (or raises FhirNotFound); a search
        returns every entry resource across pages. Returns (resources, pages fetched)."""
        url = self.url_for(relative)
        body = self._get_json(url)
        if body.get("resourceType") != "Bundle":
            return [body], 1
        resources, pages = self._pages(body, url, counted=1)
        return resources, pages + 1

    def follow_pages(self, bundle: dict) -> tuple[list[dict], int]:
        """Complete a paginated searchset the client prefetched (spec: Example of Pagination)."""
        return self._pages(bundle, self.base_url + "/", counted=0)

    def _pages(self, bundle: dict, base: str, counted: int) -> tuple[list[dict], int]:
        """The bundle's resources and those of every `next` page after it (each allowlisted), up to the
        page cap (`counted` pages already count against it): partial data is refused, never used.
        Returns (resources, further pages fetched)."""
        resources = bundle_resources(bundle)
        pages = 0
        next_url = next_link(bundle)
        while next_url:
            if counted + pages >= self.limits.max_pages:
                raise FhirBadResponse(
                    f"more than {self.limits.max_pages} pages of results "
                    "(CDS_FHIR_MAX_PAGES); refusing to act on partial data"
                )
            bundle = self._get_json(urljoin(base, next_url))
            pages += 1
            resources.extend(bundle_resources(bundle))
            next_url = next_link(bundle)
        return resources, pages

    def _get_json(self, url: str) -> dict:
        if not self._allowlist.permits(url):
            raise FhirServerNotAllowed(f"{FhirServerNotAllowed.reason}: {_host(url)}")
        headers = {"Accept": "application/fhir+json, application/json;q=0.9"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        timeout = (self.limits.connect_timeout, self.limits.read_timeout)
        try:
            with self._session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            ) as response:
                status = response.status_code
                if status in (401, 403):
                    raise FhirAuthRejected(f"{FhirAuthRejected.reason} (HTTP {status})")
                if status == 404:
                    raise FhirNotFound(f"{FhirNotFound.reason} (HTTP 404)")
                if not 200 <= status < 300:
                    raise FhirBadResponse(f"{FhirBadResponse.reason}: HTTP {status}")
                content = _read_capped(response, self.limits.max_response_bytes)
        except requests.Timeout as exc:
            raise FhirUnreachable(f"{FhirUnreachable.reason}: timed out ({_host(url)})") from exc
        except requests.ConnectionError as exc:
            raise FhirUnreachable(f"{FhirUnreachable.reason}: could not connect ({_host(url)})") from exc
        except requests.RequestException as exc:
            raise FhirUnreachable(f"{FhirUnreachable.reason}: {type(exc).__name__}") from exc
        try:
            body = json.loads(content)
        except ValueError as exc:
            raise FhirBadResponse(f"{FhirBadResponse.reason}: body is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirBadResponse(f"{FhirBadResponse.reason}: body is not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise FhirBadResponse(f"{FhirBadResponse.reason}: OperationOutcome instead of data")
        return body


def _read_capped(response: requests.Response, cap: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > cap:
            raise FhirBadResponse(f"response larger than {cap} bytes (CDS_FHIR_MAX_RESPONSE_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def _host(url: str) -> str:
    """Host only: paths and queries carry patient ids, which stay out of messages and logs."""
    try:
        return urlsplit(url).netloc or "?"
    except ValueError:
        return "?"


def next_link(bundle: dict) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def bundle_resources(bundle: dict) -> list[dict]:
    out = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if (entry.get("search") or {}).get("mode") == "outcome" or resource.get(
            "resourceType"
        ) == "OperationOutcome":
            continue  # search warnings, not data
        out.append(resource)
    return out
