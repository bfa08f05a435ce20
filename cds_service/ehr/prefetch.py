"""Prefetch: render the service's templates from context, take what the client sent, fetch the rest.

Per prefetch key, what the client sent means (CDS Hooks 2.0.1 §Prefetch, 3.0 §Prefetch):

==========================================  =====================================================
client sent                                 we do
==========================================  =====================================================
a resource or a searchset Bundle            use it; a Bundle with a ``next`` link is completed
                                            from fhirServer (the client paginated)
``null``                                    the client knows there is no data: use nothing
key absent                                  fetch it from fhirServer
an OperationOutcome                         the client could not get it: fetch it ourselves
``{"resource": {...}, "response": ...}``    a Bundle entry sent by mistake: unwrap it (recorded)
==========================================  =====================================================

The prefetch-failure policy (`OnUnavailable`) is explicit per key in the service definition:
``fail`` answers 412 (the default: a rule must never run on data it was promised but lacks);
``skip`` goes on without that key, and rules that read it are not evaluated (recorded as such).
A template whose tokens resolve to nothing (e.g. no encounterId in context) is "not applicable".
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import quote

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from ..errors import Issue, PrefetchUnavailable
from .fhir_client import EntryProblem, FhirAccessError, FhirClient, bundle_entries, next_link

log = logging.getLogger(__name__)
TOKEN = re.compile(r"\{\{\s*(.+?)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
_VARIABLE = re.compile(r"%([A-Za-z][A-Za-z0-9_\-]*)")
_TRIAL_ROOT = {
    "context": {
        "userId": "Practitioner/x",
        "patientId": "x",
        "encounterId": "x",
        "draftOrders": {"resourceType": "Bundle", "entry": []},
    },
    "userPractitionerId": "x",
}
_FHIRPATH_BUILTIN_VARS = {"context", "resource", "rootResource", "ucum", "sct", "loinc", "us-zip"}


class OnUnavailable(enum.Enum):
    FAIL = "fail"  # answer 412 Precondition Failed
    SKIP = "skip"  # evaluate without it; rules reading it are skipped and recorded


class Origin(enum.StrEnum):
    PREFETCH = "prefetch"  # the client sent it
    PREFETCH_NULL = "prefetch-null"  # the client sent null: no data exists
    FETCHED = "fetched"  # we fetched it (or completed the client's pages)
    NOT_APPLICABLE = "not-applicable"  # template tokens resolved to nothing
    UNAVAILABLE = "unavailable"  # could not be had; policy was skip


@dataclass(frozen=True)
class PrefetchTemplate:
    key: str
    text: str
    on_unavailable: OnUnavailable
    tokens: tuple[tuple[str, Callable], ...]
    depends_on: frozenset[str]

    @classmethod
    def compile(cls, key: str, text: str, on_unavailable: OnUnavailable) -> "PrefetchTemplate":
        tokens, deps = [], set()
        for match in TOKEN.finditer(text):
            expression = match.group(1)
            deps.update(v for v in _VARIABLE.findall(expression) if v not in _FHIRPATH_BUILTIN_VARS)
            try:
                compiled = fhirpathpy.compile(expression, fhirpath_models["r4"])
                # The parser recovers from some errors; a trial run catches unknown functions now,
                # not per request.
                compiled(_TRIAL_ROOT, {v: {} for v in _VARIABLE.findall(expression)})
            except Exception as exc:  # fhirpathpy raises assorted parser errors
                raise ValueError(f"prefetch token {{{{{expression}}}}} is not valid FHIRPath: {exc}") from exc
            tokens.append((match.group(0), compiled))
        return cls(key, text, on_unavailable, tuple(tokens), frozenset(deps))

    def render(self, root: dict, variables: dict) -> str | None:
        """The relative FHIR URL, or None when a token resolves to nothing."""
        out = self.text
        for raw, compiled in self.tokens:
            try:
                values = compiled(root, variables)
            except Exception:  # a malformed context the schema let through: treat as unresolvable
                return None
            values = [str(v) for v in values if v is not None and str(v) != ""]
            if not values:
                return None
            out = out.replace(raw, ",".join(quote(v, safe="-._~:") for v in values), 1)
        return out

    @property
    def is_read(self) -> bool:
        return "?" not in self.text

    @property
    def resource_type(self) -> str:
        """What the template asks for (``Encounter``): named in logs instead of the rendered URL."""
        return self.text.split("?", 1)[0].split("/", 1)[0].strip() or "?"


def token_root(context: dict) -> dict:
    """What prefetch tokens see: ``context`` plus the user identifier tokens."""
    root: dict = {"context": context}
    user = context.get("userId")
    if isinstance(user, str) and "/" in user:
        rtype, _, rid = user.partition("/")
        for token, token_type in USER_TOKENS.items():
            if rtype == token_type and rid:
                root[token] = rid
    return root


@dataclass
class PrefetchItem:
    key: str
    origin: Origin
    resources: list[dict] = field(default_factory=list)
    pages: int = 0
    note: str | None = None  # e.g. "client sent OperationOutcome", "unwrapped entry"
    problem: str | None = None  # why it is unavailable
    searchset: bool = False  # the resources came as Bundle entries (located as entry[i].resource)
    positions: list[int] | None = None  # entry index of each resource in the Bundle sent, when known
    entry_problems: list[EntryProblem] = field(default_factory=list)  # entries without a resource

    def located(self) -> list[tuple[str, dict]]:
        """(where, resource), where naming it in the request: prefetch.meds.entry[3].resource."""
        base = f"prefetch.{self.key}"
        if not self.searchset:
            return [(base, r) for r in self.resources]
        positions = self.positions or range(len(self.resources))
        return [(f"{base}.entry[{i}].resource", r) for i, r in zip(positions, self.resources, strict=False)]


@dataclass
class PrefetchResult:
    items: dict[str, PrefetchItem]

    def located(self) -> list[tuple[str, dict]]:
        """(where, resource) across all keys, in template order; see PrefetchItem.located."""
        return [pair for item in self.items.values() for pair in item.located()]

    @property
    def unavailable(self) -> frozenset[str]:
        return frozenset(k for k, item in self.items.items() if item.origin is Origin.UNAVAILABLE)


def _as_provided(key: str, value: dict | None) -> tuple[PrefetchItem | None, dict | None]:
    """Interpret one client-sent value. Returns (item, bundle-needing-pages)."""
    if value is None:
        return PrefetchItem(key, Origin.PREFETCH_NULL), None
    note = None
    if "resourceType" not in value and isinstance(value.get("resource"), dict):
        value, note = value["resource"], "unwrapped a Bundle entry sent as the prefetch value"
    if value.get("resourceType") == "OperationOutcome":
        return None, None  # the client failed to get it: fetch it ourselves
    if value.get("resourceType") == "Bundle":
        entries, junk = bundle_entries(value)
        item = PrefetchItem(
            key,
            Origin.PREFETCH,
            [r for _, r in entries],
            note=note,
            searchset=True,
            positions=[i for i, _ in entries],
            entry_problems=junk,
        )
        return item, (value if next_link(value) else None)
    return PrefetchItem(key, Origin.PREFETCH, [value], note=note), None


def resolve(
    templates: Sequence[PrefetchTemplate],
    context: dict,
    provided: dict | None,
    client: FhirClient | None,
    executor: Executor | None = None,
    service_id: str = "",
) -> PrefetchResult:
    """Resolve every template of a service. Raises PrefetchUnavailable (412) naming every key that
    could not be had under policy ``fail``.

    Fetches share the client's one deadline (CDS_FHIR_DEADLINE_MS). With an executor, every fetch runs
    in it and is waited for no longer than the time left: a key still running then is unavailable
    ("deadline"), and its thread ends within its own bounded timeouts. Each unavailable key is logged
    at WARNING with the service, the key, the resource type and the reason (never a URL: it holds the
    patient id; never the token)."""
    provided = provided or {}
    root = token_root(context)
    items: dict[str, PrefetchItem] = {}
    variables: dict[str, dict] = {}
    failures: list[Issue] = []
    pending = list(templates)

    def unavailable(template: PrefetchTemplate, why: str) -> None:
        items[template.key] = PrefetchItem(template.key, Origin.UNAVAILABLE, problem=why)
        log.warning(
            "prefetch key unavailable: service=%s key=%s resource=%s policy=%s reason=%s",
            service_id or "?",
            template.key,
            template.resource_type,
            "412"
            if template.on_unavailable is OnUnavailable.FAIL
            else "skip (rules reading it not evaluated)",
            why,
        )
        if template.on_unavailable is OnUnavailable.FAIL:
            failures.append(
                Issue(
                    f"prefetch key '{template.key}' ({template.text}) could not be had: {why}",
                    (f"prefetch.{template.key}",),
                )
            )

    def fetch(query: str | None, bundle: dict | None) -> tuple[list[dict], int, list[EntryProblem]]:
        """May run in a worker thread: network only, no shared-state writes. Raises FhirAccessError."""
        return client.follow_pages(bundle) if bundle is not None else client.get(query)

    while pending:
        # A wave: every template whose %variables are already resolved (spec: dependencies follow).
        ready = [t for t in pending if t.depends_on <= set(items)]
        if not ready:
            for t in pending:
                unavailable(t, "its template depends on a prefetch key that is missing or cyclic")
            break
        pending = [t for t in pending if t not in ready]
        jobs = []
        for template in ready:
            bundle = None
            if template.key in provided:
                item, bundle = _as_provided(template.key, provided[template.key])
                if item is not None and bundle is None:
                    items[template.key] = item
                    continue
            query = None
            if bundle is None:
                query = template.render(root, variables)
                if query is None:
                    items[template.key] = PrefetchItem(template.key, Origin.NOT_APPLICABLE)
                    continue
            if client is None:
                unavailable(template, "the request has no fhirServer")
                continue
            if not client.allowed:
                unavailable(template, "fhirServer is not in CDS_FHIR_ALLOWED_SERVERS; no request was sent")
                continue
            jobs.append((template, query, bundle))
        # Through the executor even when alone: the wait, not the server, decides when it ends.
        pooled = executor is not None and bool(jobs)
        futures = [executor.submit(fetch, query, bundle) if pooled else None for _, query, bundle in jobs]
        for (template, query, bundle), future in zip(jobs, futures, strict=True):
            try:
                if future is None:
                    resources, pages, junk = fetch(query, bundle)
                else:
                    resources, pages, junk = future.result(timeout=max(client.remaining(), 0.0))
            except FhirAccessError as exc:
                unavailable(template, exc.diagnostics)
                continue
            except FutureTimeout:
                future.cancel()
                unavailable(
                    template,
                    f"the call's FHIR deadline of {client.limits.deadline * 1000:.0f} ms was reached "
                    "(CDS_FHIR_DEADLINE_MS) before the server answered",
                )
                continue
            except Exception as exc:  # a defect on a hostile answer must not become a 500: policy decides
                log.error("prefetch fetch failed unexpectedly: %s (key %s)", type(exc).__name__, template.key)
                unavailable(template, f"unexpected error reading the FHIR answer ({type(exc).__name__})")
                continue
            note = "completed the client's paginated searchset" if bundle is not None else None
            items[template.key] = PrefetchItem(
                template.key,
                Origin.FETCHED,
                resources,
                pages=pages,
                note=note,
                searchset=bundle is not None or not template.is_read,
                entry_problems=junk,
            )
        for template in ready:
            item = items.get(template.key)
            if item is not None and item.resources and template.is_read:
                variables[template.key] = item.resources[0]
            elif item is not None:
                variables[template.key] = {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [{"resource": r} for r in item.resources],
                }
    ordered = {t.key: items[t.key] for t in templates if t.key in items}
    if failures:
        error = PrefetchUnavailable(failures[0].diagnostics, issues=failures)
        error.partial = PrefetchResult(ordered)  # what was had and why the rest was not: for the record
        raise error
    return PrefetchResult(ordered)
