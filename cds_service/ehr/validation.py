"""Validation of the FHIR R4 resources a hook call brings (prefetch, fetched data, draft orders).

`fhir.resources` R4B models check structure and datatypes (R4B serves R4 data; there is no R4
package since fhir.resources 7). They do not check required value-set bindings, so the status-like
codes that rules depend on are checked here against the R4 required bindings. Unknown elements are
tolerated (rules never read them). Every missing required top-level element is named (the models
stop at the first), with issue code ``required``, so callers can tell absent from malformed.

One deviation is normalised rather than reported, because its meaning is unambiguous: a single
object where R4 wants a list (the CDS Hooks Sandbox sends ``MedicationRequest.category`` so). The
copy is wrapped and the path recorded. What a problem costs is the caller's decision: draft orders
(the EHR's own request) answer 400, prefetched data is screened per resource (data_quality.py).

Validation is cached by content hash: an EHR sends the same chart again and again, and a 1 MB
record costs ~0.1 s to validate the first time.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime

from cachetools import LRUCache
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ..canonical import content_hash
from ..errors import InvalidRequest, Issue, clip, field_path

# R4 required bindings for elements rules read (hl7.org/fhir/R4 valuesets).
_MED_REQUEST_STATUS = {
    "active",
    "on-hold",
    "cancelled",
    "completed",
    "entered-in-error",
    "stopped",
    "draft",
    "unknown",
}
_REQUEST_INTENT = {
    "proposal",
    "plan",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
}
_SERVICE_INTENT = _REQUEST_INTENT | {"directive"}
REQUIRED_CODES: dict[str, dict[str, set[str]]] = {
    "Patient": {"gender": {"male", "female", "other", "unknown"}},
    "MedicationRequest": {"status": _MED_REQUEST_STATUS, "intent": _REQUEST_INTENT},
    "MedicationStatement": {
        "status": {
            "active",
            "completed",
            "entered-in-error",
            "intended",
            "stopped",
            "on-hold",
            "unknown",
            "not-taken",
        }
    },
    "MedicationDispense": {
        "status": {
            "preparation",
            "in-progress",
            "cancelled",
            "on-hold",
            "completed",
            "entered-in-error",
            "stopped",
            "declined",
            "unknown",
        }
    },
    "Observation": {
        "status": {
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    },
    "Encounter": {
        "status": {
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    },
    "Procedure": {
        "status": {
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        }
    },
    "CarePlan": {
        "status": {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"},
        "intent": {"proposal", "plan", "order", "option"},
    },
    "ServiceRequest": {
        "status": {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"},
        "intent": _SERVICE_INTENT,
    },
    "AllergyIntolerance": {
        "type": {"allergy", "intolerance"},
        "criticality": {"low", "high", "unable-to-assess"},
    },
}
# Required CodeableConcept bindings: (element, code system, allowed codes).
REQUIRED_CONCEPTS: dict[str, list[tuple[str, str, set[str]]]] = {
    "Condition": [
        (
            "clinicalStatus",
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
            {"active", "recurrence", "relapse", "inactive", "remission", "resolved"},
        ),
        (
            "verificationStatus",
            "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"},
        ),
    ],
    "AllergyIntolerance": [
        (
            "clinicalStatus",
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            {"active", "inactive", "resolved"},
        ),
        (
            "verificationStatus",
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            {"unconfirmed", "confirmed", "refuted", "entered-in-error"},
        ),
    ],
}


MAX_NORMALISATION_ROUNDS = 3  # a list inside an object that was itself a lone object shows up next round


@dataclass(frozen=True)
class Checked:
    """One resource examined: the (possibly normalised) resource, what is wrong with it, its hash."""

    resource: dict
    issues: list[Issue]
    digest: str
    normalised: list[str] = field(default_factory=list)  # paths wrapped into a one-item list


@functools.cache
def _model(rtype: str):
    try:
        return get_fhir_model_class(rtype)
    except (ValueError, KeyError, AttributeError):
        return None


def known_type(rtype) -> bool:
    return isinstance(rtype, str) and rtype.isalpha() and _model(rtype) is not None


@functools.cache
def required_elements(rtype: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Top-level elements of minimum cardinality 1: (name, JSON names that satisfy it)."""
    model = _model(rtype)
    if model is None:
        return ()
    out: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        alias = info.alias or name
        if extra.get("one_of_many_required"):
            group = extra["one_of_many"]
            out[f"{group}[x]"] = (*out.get(f"{group}[x]", ()), alias)
        elif extra.get("element_required") or info.is_required():
            out[alias] = (alias,)
    return tuple(out.items())


_DATE_KINDS = ("Date value", "DateTime value", "Instant value", "Time value")


def _readable_date(text: str) -> bool:
    """A date-like string a lenient reader still understands (``2021-12-09`` where an instant is due)."""
    candidate = text.strip().replace("Z", "+00:00")
    if len(candidate) in (4, 7) and candidate[:4].isdigit():
        return True
    try:
        datetime.fromisoformat(candidate)
    except ValueError:
        return False
    return True


def _issue_for(kind: str, err: dict, full: str) -> Issue:
    """Issue codes tell the screen (data_quality.py) what a problem costs: ``required`` (absent: read as
    absent), ``value`` with severity warning (off-format but readable, e.g. a date-only instant), or an
    error (``structure``: wrong JSON type; ``value``: unreadable value) that makes the element unreadable."""
    message = f"{full}: {err['msg']}"
    if kind == "missing":
        return Issue(message, (full,), code="required")
    value = err.get("input")
    if kind in ("value_error", "string_pattern_mismatch") and isinstance(value, str):
        is_date = any(k in err["msg"] for k in _DATE_KINDS)
        readable = is_date and _readable_date(value)
        return Issue(message, (full,), code="value", severity="warning" if readable else "error")
    return Issue(message, (full,), code="structure")


def _empty_elements(resource: dict, where: str, limit: int = 20) -> list[Issue]:
    """FHIR ele-1: every element has a value or children. ``{}``, ``[]`` and ``""`` carry nothing (an
    empty medicationCodeableConcept names no drug): reported so the screen can tell read from unreadable."""
    found: list[Issue] = []
    stack: list[tuple[object, tuple]] = [(v, (k,)) for k, v in resource.items()]
    while stack and len(found) < limit:
        node, loc = stack.pop()
        if node in ({}, [], ""):
            full = f"{where}.{field_path(loc)}"
            found.append(
                Issue(f"{full}: empty (FHIR ele-1: an element has a value or children)", (full,), "value")
            )
        elif isinstance(node, dict):
            stack.extend((v, (*loc, k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*loc, i)) for i, v in enumerate(node))
    return found


def _set_at(resource: dict, loc: tuple, wrap) -> dict:
    """A copy of `resource` with the value at `loc` replaced by wrap(value); shared branches stay shared."""
    root = dict(resource)
    node = root
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        child = node[part]
        if last:
            node[part] = wrap(child)
        else:
            child = list(child) if isinstance(child, list) else dict(child)
            node[part] = child
            node = child
    return root


_HERE = "\x00"  # where a cached verdict's paths start; replaced by the resource's location on use


@dataclass(frozen=True)
class _Verdict:
    """What validation found in one resource content, independent of where it sat."""

    issues: tuple[Issue, ...]
    lone: tuple[tuple, ...]  # locations wrapped into lists, in order

    def at(self, resource: dict, where: str, digest: str) -> Checked:
        current = resource
        for loc in self.lone:
            current = _set_at(current, loc, lambda v: [v])
        issues = [
            replace(
                i,
                diagnostics=i.diagnostics.replace(_HERE, where),
                expression=tuple(e.replace(_HERE, where) for e in i.expression),
            )
            for i in self.issues
        ]
        return Checked(current, issues, digest, [f"{where}.{field_path(loc)}" for loc in self.lone])


class ResourceValidator:
    """Thread-safe, with an LRU of verdicts by content hash: an EHR sends the same chart again and
    again, imperfect resources included, and validation is the costly part of screening."""

    def __init__(self, cache_size: int = 50_000):
        # 0: keep nothing (CDS_RESOURCE_CACHE_SIZE=0, to measure a call that meets every resource anew)
        self._verdicts: LRUCache[str, _Verdict] | None = LRUCache(maxsize=cache_size) if cache_size else None
        self._lock = threading.Lock()

    def examine(self, resource: dict, where: str) -> Checked:
        """Normalise lone objects into lists, then validate; never raises for bad content."""
        digest = content_hash(resource)
        if self._verdicts is None:
            return self._judge(resource).at(resource, where, digest)
        with self._lock:
            verdict = self._verdicts.get(digest)  # get() marks it recently used
        if verdict is None:
            verdict = self._judge(resource)
            with self._lock:
                self._verdicts[digest] = verdict
        return verdict.at(resource, where, digest)

    def _judge(self, resource: dict) -> _Verdict:
        current, lone_all = resource, []
        for _ in range(MAX_NORMALISATION_ROUNDS):
            issues, lone = self._problems(current, _HERE)
            if not lone:
                break
            for loc in lone:
                current = _set_at(current, loc, lambda v: [v])
            lone_all += lone
        return _Verdict(tuple(issues), tuple(lone_all))

    def problems(self, resource: dict, where: str) -> list[Issue]:
        """Everything wrong with the resource as sent (no normalisation)."""
        return self._problems(resource, where)[0]

    def _problems(self, resource: dict, where: str) -> tuple[list[Issue], list[tuple]]:
        """(issues, locations of lone objects that R4 wants as lists)."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue(f"{where}: resourceType is missing", (f"{where}.resourceType",))], []
        model = _model(rtype) if rtype.isalpha() else None
        if model is None:
            return [
                Issue(
                    f"{where}: unknown FHIR R4 resourceType {clip(rtype, 40)!r}", (f"{where}.resourceType",)
                )
            ], []
        issues: list[Issue] = []
        lone: list[tuple] = []
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_context=False):
                kind = err.get("type")
                if kind == "extra_forbidden":
                    continue  # unknown elements: tolerated, never read
                loc = tuple(p for p in err["loc"] if p != "__root__")
                if kind == "list_type" and isinstance(err.get("input"), dict) and loc:
                    lone.append(loc)
                    continue
                path = field_path(loc)
                full = f"{where}.{path}" if path else where
                issues.append(_issue_for(kind, err, full))

        except Exception as exc:  # the models raise more than ValidationError on odd input (KeyError ...)
            issues.append(Issue(f"{where}: not a valid {rtype} ({type(exc).__name__})", (where,)))
        named = {e for i in issues for e in i.expression}
        issues += [i for i in _empty_elements(resource, where) if i.expression[0] not in named]
        named = {e for i in issues for e in i.expression}
        for element, names in required_elements(rtype):
            full = f"{where}.{element}"
            if full not in named and all(resource.get(n) in (None, [], {}, "") for n in names):
                issues.append(Issue(f"{full}: required element is missing", (full,), code="required"))
        for element, allowed in REQUIRED_CODES.get(rtype, {}).items():
            value = resource.get(element)
            full = f"{where}.{element}"
            if value is None or full in named:
                continue  # absent, or already reported with its datatype
            if not isinstance(value, str) or value not in allowed:
                issues.append(
                    Issue(
                        f"{full}: {clip(value, 40)} is not in the R4 required value set "
                        f"({' | '.join(sorted(allowed))})",
                        (full,),
                        code="code-invalid",
                    )
                )
        for element, system, allowed in REQUIRED_CONCEPTS.get(rtype, []):
            concept = resource.get(element)
            codings = concept.get("coding") if isinstance(concept, dict) else None
            for i, coding in enumerate(codings if isinstance(codings, list) else []):
                if not isinstance(coding, dict) or coding.get("system") != system:
                    continue
                code = coding.get("code")
                if not isinstance(code, str) or code not in allowed:
                    full = f"{where}.{element}.coding[{i}].code"
                    issues.append(
                        Issue(
                            f"{full}: {clip(code, 40)} is not in the R4 required value set",
                            (full,),
                            code="code-invalid",
                        )
                    )
        return issues, lone

    def check(self, resources: list[tuple[str, dict]]) -> dict[int, str]:
        """Strict: validate (where, resource) pairs as sent; raise InvalidRequest listing every problem.
        Returns the content hash of each resource by id() for the decision log."""
        hashes: dict[int, str] = {}
        issues: list[Issue] = []
        for where, resource in resources:
            checked = self.examine(resource, where)
            hashes[id(resource)] = checked.digest
            issues.extend(checked.issues)
            issues.extend(
                Issue(f"{path}: a single object where FHIR R4 wants a list", (path,))
                for path in checked.normalised
            )
        if issues:
            raise_invalid(issues)
        return hashes


def raise_invalid(issues: list[Issue]) -> None:
    raise InvalidRequest(
        issues[0].diagnostics
        if len(issues) == 1
        else f"{len(issues)} invalid FHIR elements; first: {issues[0].diagnostics}",
        issues=issues,
    )


# A literal reference: [base/]Type/id[/_history/vid] (FHIR R4 §References). `Patient/p/../other` is not one.
_LITERAL_REFERENCE = re.compile(
    r"^(?:https?://[^\s?#]+/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
PATIENT_ELEMENTS = ("subject", "patient")  # where resources the rules read name their patient


@dataclass(frozen=True)
class ScopeProblem:
    element: str  # e.g. subject.reference
    why: str
    certain: bool  # names someone else for sure (another Patient, a Group); else it cannot be confirmed


def patient_scope_problem(resource: dict, patient_id: str) -> ScopeProblem | None:
    """Why the resource may not be about `patient_id`; None when it is, or names no one. Bundle-local
    (`urn:uuid:`) and contained (`#`) references cannot be told apart here and pass. Nothing from the
    resource is quoted back (it may be another patient's id)."""
    if resource.get("resourceType") == "Patient":
        if resource.get("id") not in (None, patient_id):
            return ScopeProblem("id", "a Patient other than context.patientId", True)
        return None
    for element in PATIENT_ELEMENTS:
        ref = resource.get(element)
        if ref is None:
            continue
        text = ref.get("reference") if isinstance(ref, dict) else None
        if text is None:
            if isinstance(ref, dict):
                continue  # identifier- or display-only reference: names no one we can check
            return ScopeProblem(element, "not a Reference", False)
        path = f"{element}.reference"
        if not isinstance(text, str):
            return ScopeProblem(path, "not a string", False)
        if text.startswith(("urn:uuid:", "urn:oid:", "#")):
            continue
        match = _LITERAL_REFERENCE.match(text)
        if match is None:
            if text == patient_id:
                continue  # a bare id: the type is implied
            if "/" in text or not text.strip():  # a path that is no reference (Patient/p/../other)
                return ScopeProblem(path, "not a reference of the form [base/]Patient/<id>", True)
            return ScopeProblem(
                path, "not a reference of the form [base/]Patient/<id>: cannot confirm the patient", False
            )
        if match["type"] != "Patient":
            return ScopeProblem(path, f"refers to a {match['type']}, not to context.patientId", True)
        if match["id"] != patient_id:
            return ScopeProblem(path, "refers to another patient than context.patientId", True)
    return None
