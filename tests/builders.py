"""Hook requests for tests, built from the same compact case format the rule files use."""

from __future__ import annotations

import uuid
from datetime import date

from cds_service.clinical.rule_cases import PATIENT_ID, USER, CaseBuilder

ORDER_SIGN_SERVICE = "medication-order-check"
PATIENT_VIEW_SERVICE = "patient-chart-review"


def searchset(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


# prefetch_keys: the keys to send (None: every key of the service, each a searchset of the case's data).


def draft_bundle(drafts: list[dict]) -> dict:
    """context.draftOrders of order-sign / order-select."""
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": d} for d in drafts]}


def _medication_keys(by_type: dict[str, list[dict]]) -> dict[str, dict]:
    """The medication prefetch keys of both services: orders, statements, fills, administrations."""
    return {
        "medications": searchset(by_type.get("MedicationRequest", [])),
        "statements": searchset(by_type.get("MedicationStatement", [])),
        "dispenses": searchset(by_type.get("MedicationDispense", [])),
        "administrations": searchset(by_type.get("MedicationAdministration", [])),
    }


def _by_type(case: dict, today: date | None) -> tuple[dict[str, list[dict]], list[dict]]:
    resources, drafts = CaseBuilder(today or date.today()).build(case)
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    return by_type, drafts


def order_sign(
    case: dict,
    *,
    prefetch_keys=None,
    today: date | None = None,
    **envelope,
) -> dict:
    by_type, drafts = _by_type(case, today)
    full = {
        "patient": by_type["Patient"][0],
        **_medication_keys(by_type),
        "allergies": searchset(by_type.get("AllergyIntolerance", [])),
        "conditions": searchset(by_type.get("Condition", [])),
        "labs": searchset(by_type.get("Observation", [])),
        "notes": searchset(by_type.get("DocumentReference", [])),
        "reports": searchset(by_type.get("DiagnosticReport", [])),
    }
    body = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": USER,
            "patientId": PATIENT_ID,
            "draftOrders": draft_bundle(drafts),
        },
        "prefetch": full if prefetch_keys is None else {k: full[k] for k in prefetch_keys},
    }
    body.update(envelope)
    return body


def patient_view(
    case: dict,
    *,
    prefetch_keys=None,
    today: date | None = None,
    **envelope,
) -> dict:
    by_type, _ = _by_type(case, today)
    full = {
        "patient": by_type["Patient"][0],
        **_medication_keys(by_type),
        "medicationHistory": searchset(by_type.get("MedicationRequest", [])),
        "conditions": searchset(by_type.get("Condition", [])),
        "observations": searchset(by_type.get("Observation", [])),
        "procedures": searchset(by_type.get("Procedure", [])),
        "referrals": searchset(by_type.get("ServiceRequest", [])),
        "careplans": searchset(by_type.get("CarePlan", [])),
        "allergies": searchset(by_type.get("AllergyIntolerance", [])),
        "notes": searchset(by_type.get("DocumentReference", [])),
        "reports": searchset(by_type.get("DiagnosticReport", [])),
    }
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": USER, "patientId": PATIENT_ID},
        "prefetch": full if prefetch_keys is None else {k: full[k] for k in prefetch_keys},
    }
    body.update(envelope)
    return body
