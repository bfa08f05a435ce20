"""Validation of the FHIR R4 resources a hook call brings (prefetch, fetched data, draft orders).

`fhir.resources` R4B models check structure and datatypes (R4B serves R4 data; there is no R4
package since fhir.resources 7). They do not check required value-set bindings, so the status-like
codes that rules depend on are checked here against the R4 required bindings. Unknown elements are
tolerated (rules never read them). A resource that fails gets a 400 naming where it came from and
the field, e.g. ``prefetch.patient.birthDate``.

Validation is cached by content hash: an EHR sends the same chart again and again, and a 1 MB
record costs ~0.1 s to validate the first time.
"""

from __future__ import annotations

import threading

from cachetools import LRUCache
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ..canonical import content_hash
from ..errors import InvalidRequest, Issue, field_path

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


class ResourceValidator:
    """Thread-safe, with an LRU of content hashes already found valid."""

    def __init__(self, cache_size: int = 50_000):
        self._ok: LRUCache[str, bool] = LRUCache(maxsize=cache_size)
        self._lock = threading.Lock()

    def problems(self, resource: dict, where: str) -> list[Issue]:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue(f"{where}: resourceType is missing", (f"{where}.resourceType",))]
        try:
            model = get_fhir_model_class(rtype)
        except (ValueError, KeyError):
            return [Issue(f"{where}: unknown FHIR R4 resourceType {rtype!r}", (f"{where}.resourceType",))]
        issues = []
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            for err in exc.errors():
                if err.get("type") == "extra_forbidden":
                    continue  # unknown elements: tolerated, never read
                path = field_path(p for p in err["loc"] if p != "__root__")
                full = f"{where}.{path}" if path else where
                issues.append(Issue(f"{full}: {err['msg']}", (full,)))
        except (TypeError, ValueError) as exc:
            issues.append(Issue(f"{where}: {exc}", (where,)))
        for element, allowed in REQUIRED_CODES.get(rtype, {}).items():
            value = resource.get(element)
            if value is not None and value not in allowed:
                issues.append(
                    Issue(
                        f"{where}.{element}: {value!r} is not in the R4 required value set "
                        f"({' | '.join(sorted(allowed))})",
                        (f"{where}.{element}",),
                        code="code-invalid",
                    )
                )
        for element, system, allowed in REQUIRED_CONCEPTS.get(rtype, []):
            concept = resource.get(element)
            for i, coding in enumerate(
                (concept or {}).get("coding") or [] if isinstance(concept, dict) else []
            ):
                if (
                    isinstance(coding, dict)
                    and coding.get("system") == system
                    and coding.get("code") not in allowed
                ):
                    issues.append(
                        Issue(
                            f"{where}.{element}.coding[{i}].code: {coding.get('code')!r} is not in "
                            f"the R4 required value set",
                            (f"{where}.{element}.coding[{i}].code",),
                            code="code-invalid",
                        )
                    )
        return issues

    def check(self, resources: list[tuple[str, dict]]) -> dict[int, str]:
        """Validate (where, resource) pairs; raise InvalidRequest listing every problem.
        Returns the content hash of each resource by id() for the decision log."""
        hashes: dict[int, str] = {}
        issues: list[Issue] = []
        for where, resource in resources:
            digest = content_hash(resource)
            hashes[id(resource)] = digest
            with self._lock:
                if self._ok.get(digest):  # get() marks it recently used
                    continue
            found = self.problems(resource, where)
            if found:
                issues.extend(found)
                continue
            with self._lock:
                self._ok[digest] = True
        if issues:
            raise InvalidRequest(
                issues[0].diagnostics
                if len(issues) == 1
                else f"{len(issues)} invalid FHIR elements; first: {issues[0].diagnostics}",
                issues=issues,
            )
        return hashes


def check_patient_consistency(resources: list[tuple[str, dict]], patient_id: str) -> list[Issue]:
    """Every resource about a patient must be about *this* patient (a wrong-chart safety net)."""
    issues = []
    for where, resource in resources:
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            if resource.get("id") not in (None, patient_id):
                issues.append(
                    Issue(
                        f"{where}.id: Patient {resource.get('id')!r} is not context.patientId",
                        (f"{where}.id",),
                    )
                )
            continue
        for element in ("subject", "patient"):
            ref = resource.get(element)
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                text = ref["reference"]
                if "Patient/" in text and not text.startswith("urn:"):
                    ref_id = text.rsplit("Patient/", 1)[1].split("/")[0]
                    if ref_id != patient_id:
                        issues.append(
                            Issue(
                                f"{where}.{element}.reference: refers to another patient than "
                                "context.patientId",
                                (f"{where}.{element}.reference",),
                            )
                        )
    return issues
