"""One exception family for everything a caller can get wrong or the service cannot do.

Each error carries its HTTP status and FHIR issue code, and renders as an OperationOutcome (the
body CDS Hooks 3.0 recommends for non-2xx answers). `expression` names the offending field as a
dotted path into the request body (e.g. ``context.draftOrders.entry[0].resource.status``).

    CdsError                  500 exception (a defect: logged once, by the app's handler)
    ├── InvalidRequest        400 invalid
    ├── Unauthorized          401 login
    ├── NotFound              404 not-found
    ├── MethodNotAllowed      405 not-supported
    ├── PrefetchUnavailable   412 processing   (ehr.fhir_client.FhirAccessError below it)
    ├── PayloadTooLarge       413 too-costly
    ├── UnsupportedMediaType  415 not-supported
    ├── TooManyRequests       429 throttled    (per-client rate limit, with Retry-After)
    └── HttpError             any other status werkzeug raises

`ContentError` is apart: a bad hook, rule or terminology file, raised at start-up, never on a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def field_path(parts: Iterable[str | int]) -> str:
    """``("entry", 0, "resource")`` -> ``entry[0].resource``: the one way paths are written."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def join_path(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


MAX_ECHO_CHARS = 80  # a value quoted back in a message (a client's 1 MB string must not come back)
MAX_DIAGNOSTICS_CHARS = 1000
MAX_ISSUES = 50  # an OperationOutcome lists this many issues, then says how many more there were


def clip(value, limit: int = MAX_ECHO_CHARS) -> str:
    """`value` as text no longer than about `limit`: how anything from the input is quoted back."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@dataclass(frozen=True)
class Issue:
    diagnostics: str
    expression: tuple[str, ...] = ()
    code: str | None = None  # overrides the error's code for this issue
    severity: str = "error"

    def __post_init__(self):  # the last guard against amplifying input: no issue grows with it
        if len(self.diagnostics) > MAX_DIAGNOSTICS_CHARS:
            object.__setattr__(self, "diagnostics", clip(self.diagnostics, MAX_DIAGNOSTICS_CHARS))
        if any(len(e) > 300 for e in self.expression):
            object.__setattr__(self, "expression", tuple(clip(e, 300) for e in self.expression))


class CdsError(Exception):
    """Base of the family. Subclasses fix `status` and `code`."""

    status: int = 500
    code: str = "exception"  # http://hl7.org/fhir/issue-type

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: str | list[str] | tuple[str, ...] | None = None,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ):
        diagnostics = clip(diagnostics, MAX_DIAGNOSTICS_CHARS)
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        if isinstance(expression, str):
            expression = (expression,)
        issues = list(issues) if issues else [Issue(diagnostics, tuple(expression or ()))]
        if len(issues) > MAX_ISSUES:
            more = len(issues) - MAX_ISSUES
            issues = issues[:MAX_ISSUES] + [
                Issue(f"... and {more} more issues of the same request, not listed")
            ]
        self.issues: list[Issue] = issues
        self.headers = headers or {}

    def to_operation_outcome(self) -> dict:
        out = []
        for issue in self.issues:
            entry = {
                "severity": issue.severity,
                "code": issue.code or self.code,
                "diagnostics": issue.diagnostics,
            }
            if issue.expression:
                entry["expression"] = list(issue.expression)
            out.append(entry)
        return {"resourceType": "OperationOutcome", "issue": out}


class InvalidRequest(CdsError):
    status, code = 400, "invalid"


class Unauthorized(CdsError):
    status, code = 401, "login"

    def __init__(self, diagnostics: str, **kw):
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="cds-services"'})
        super().__init__(diagnostics, **kw)


class NotFound(CdsError):
    status, code = 404, "not-found"


class MethodNotAllowed(CdsError):
    status, code = 405, "not-supported"


class PrefetchUnavailable(CdsError):
    """Data the service requires could not be had from prefetch or the FHIR server (spec: 412)."""

    status, code = 412, "processing"
    partial = None  # the prefetch keys resolved before the failure (ehr.prefetch.PrefetchResult), if any


class PayloadTooLarge(CdsError):
    status, code = 413, "too-costly"

    @classmethod
    def over(cls, limit: int) -> "PayloadTooLarge":
        return cls(f"request body larger than {limit} bytes (CDS_MAX_REQUEST_BYTES)")


class UnsupportedMediaType(CdsError):
    status, code = 415, "not-supported"


class TooManyRequests(CdsError):
    status, code = 429, "throttled"

    def __init__(self, diagnostics: str, *, retry_after_s: int, **kw):
        kw.setdefault("headers", {"Retry-After": str(retry_after_s)})
        super().__init__(diagnostics, **kw)


class HttpError(CdsError):
    """An HTTP error werkzeug raised with a status none of the classes above stands for."""

    code = "processing"

    def __init__(self, status: int, diagnostics: str, **kw):
        super().__init__(diagnostics, **kw)
        self.status = status


class ContentError(Exception):
    """A hook, rule or terminology file is invalid. Raised at start-up, never on a request."""

    def __init__(self, path: str, field_path: str, message: str):
        self.path, self.field_path, self.message = path, field_path, message
        super().__init__(f"{path}: {field_path or '<root>'}: {message}")


@dataclass
class FieldErrors:
    """Collects marshmallow-style nested messages into flat (path, message) issues."""

    prefix: str = ""
    issues: list[Issue] = field(default_factory=list)

    def add_messages(self, messages, path: str | None = None) -> "FieldErrors":
        base = self.prefix if path is None else path
        if isinstance(messages, dict):
            for key, value in messages.items():
                if key == "_schema":
                    self.add_messages(value, base)
                    continue
                self.add_messages(value, join_path(base, field_path([key])))
        elif isinstance(messages, (list, tuple)):
            if all(isinstance(m, str) for m in messages):
                for m in messages:
                    self.issues.append(Issue(f"{base or 'body'}: {m}", (base,) if base else ()))
            else:
                for m in messages:
                    self.add_messages(m, base)
        else:
            self.issues.append(Issue(f"{base or 'body'}: {messages}", (base,) if base else ()))
        return self
