"""What the mock EHR shows of a chart before any CDS call: demographics, problems, medications, allergies,
recent labs and notes, read from the sandbox's FHIR resources (pure functions, no clinical judgement)."""

from __future__ import annotations

from datetime import date

from ..clinical.facts import MEDICATION_TYPES, SOURCES, age_in_years, name_of, resolve_medication
from ..ehr.documents import read_documents
from .store import SandboxStore

MAX_LABS = 20
MAX_NOTE_CHARS = 4000


def concept_text(concept) -> str:
    """Its text or first display, else its first code (a chart shows what it has)."""
    return name_of(concept, _code(concept))


def _code(concept) -> str:
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
        return ""
    for coding in concept["coding"]:
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return ""


def person_name(patient: dict) -> str:
    for name in patient.get("name") or []:
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])
            given = " ".join(str(g) for g in name.get("given") or [])
            return f"{given} {name.get('family') or ''}".strip()
    return patient.get("id", "")


def age_on(birth: str | None, today: date) -> int | None:
    try:
        return age_in_years(date.fromisoformat(str(birth)[:10]), today)
    except (TypeError, ValueError):
        return None


def demographics(patient: dict, today: date) -> dict:
    return {
        "id": patient.get("id"),
        "name": person_name(patient),
        "gender": patient.get("gender"),
        "birthDate": patient.get("birthDate"),
        "age": age_on(patient.get("birthDate"), today),
    }


def _status(resource: dict, element: str) -> str:
    return concept_text(resource.get(element)) or _code(resource.get(element))


def _medication_concept(store: SandboxStore, resource: dict) -> dict | None:
    """The drug's concept: inline, or from the Medication it refers to (contained or on this server)."""
    if resource.get("medicationCodeableConcept") is not None:
        return resource["medicationCodeableConcept"]
    ref = (resource.get("medicationReference") or {}).get("reference")
    if not isinstance(ref, str):
        return None
    target = resolve_medication(ref, resource, {})
    if target is None and "/" in ref:
        target = store.read("Medication", ref.rstrip("/").rsplit("/", 1)[-1])
    return (target or {}).get("code")


def _dosage(request: dict) -> str:
    dosages = request.get("dosageInstruction") or request.get("dosage") or []
    for dosage in dosages if isinstance(dosages, list) else [dosages]:
        if isinstance(dosage, dict):
            if dosage.get("text"):
                return str(dosage["text"])
            repeat = ((dosage.get("timing") or {}).get("repeat")) or {}
            dose = ((dosage.get("doseAndRate") or [{}])[0] or {}).get("doseQuantity") or {}
            parts = []
            if dose.get("value") is not None:
                parts.append(f"{dose['value']} {dose.get('unit') or ''}".strip())
            if repeat.get("frequency"):
                parts.append(
                    f"{repeat['frequency']} x per {repeat.get('period', 1)} {repeat.get('periodUnit', 'd')}"
                )
            return ", ".join(parts)
    return ""


def _effective(resource: dict) -> str:
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        if resource.get(key):
            return str(resource[key])
    period = resource.get("effectivePeriod") or {}
    return str(period.get("start") or "")


def _lab_value(obs: dict) -> tuple[str, str]:
    quantity = obs.get("valueQuantity")
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        return str(quantity["value"]), str(quantity.get("unit") or quantity.get("code") or "")
    if obs.get("valueCodeableConcept"):
        return concept_text(obs["valueCodeableConcept"]), ""
    for key in ("valueString", "valueBoolean", "valueInteger"):
        if key in obs:
            return str(obs[key]), ""
    return "", ""


def _is_lab(obs: dict) -> bool:
    return any(
        isinstance(c, dict) and c.get("code") == "laboratory"
        for cat in obs.get("category") or []
        if isinstance(cat, dict)
        for c in cat.get("coding") or []
    )


def chart_summary(store: SandboxStore, patient_id: str, today: date) -> dict | None:
    patient = store.read("Patient", patient_id)
    if patient is None:
        return None

    def of(rtype: str) -> list[dict]:
        return store.patient_resources(patient_id, rtype)

    problems = [
        {
            "display": concept_text(c.get("code")),
            "clinicalStatus": _status(c, "clinicalStatus"),
            "onset": c.get("onsetDateTime") or c.get("recordedDate"),
        }
        for c in of("Condition")
    ]
    problems.sort(key=lambda p: (p["clinicalStatus"] != "active", str(p["onset"] or "")), reverse=False)
    medications = [
        {
            "display": concept_text(concept)
            or (m.get("medicationReference") or {}).get("display")
            or (m.get("medicationReference") or {}).get("reference", ""),
            "code": _code(concept),
            "source": SOURCES[rtype],
            "status": m.get("status"),
            "authoredOn": m.get("authoredOn")
            or m.get("whenHandedOver")
            or (m.get("effectivePeriod") or {}).get("start")
            or m.get("effectiveDateTime"),
            "dosage": _dosage(m),
        }
        for rtype in MEDICATION_TYPES
        for m in of(rtype)
        for concept in [_medication_concept(store, m)]
    ]
    medications.sort(key=lambda m: (m["status"] != "active", str(m["authoredOn"] or "")))
    allergies = [
        {
            "display": concept_text(a.get("code")),
            "criticality": a.get("criticality"),
            "clinicalStatus": _status(a, "clinicalStatus"),
            "reactions": [
                concept_text(man)
                for reaction in a.get("reaction") or []
                if isinstance(reaction, dict)
                for man in reaction.get("manifestation") or []
            ],
        }
        for a in of("AllergyIntolerance")
    ]
    labs = []
    for obs in sorted((o for o in of("Observation") if _is_lab(o)), key=_effective, reverse=True)[:MAX_LABS]:
        value, unit = _lab_value(obs)
        labs.append(
            {
                "display": concept_text(obs.get("code")),
                "value": value,
                "unit": unit,
                "date": _effective(obs),
                "interpretation": concept_text((obs.get("interpretation") or [None])[0]),
            }
        )
    documents = read_documents(of("DocumentReference") + of("DiagnosticReport"), None)
    notes = [
        {
            "id": text.ref,
            "title": text.title,
            "date": text.date.isoformat() if text.date else None,
            "text": text.text[:MAX_NOTE_CHARS],
        }
        for text in sorted(documents.texts, key=lambda t: t.date.isoformat() if t.date else "", reverse=True)
    ]
    return {
        "patient": demographics(patient, today),
        "problems": problems,
        "medications": medications,
        "allergies": allergies,
        "labs": labs,
        "notes": notes,
    }
