"""What a card says when a fact from a clinical note made its rule fire.

The clinician must be able to judge the evidence without opening the chart: the card quotes the
sentence, names the document and its date, says the fact is not coded, and who decided that the sentence
asserts it (the rule-based reader, or AI-assisted with the model id). It also offers to record the coded
fact (a `create` action: AllergyIntolerance, MedicationStatement or Condition, verification
`unconfirmed`, pointing back at the note), so the next check does not depend on reading the note again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from ..clinical.mentions import ALLERGY, CONDITION, MEDICATION, PRESENT, Mention

READER = "the rule-based note reader (terminology match + ConText assertion)"
_CLINICAL = {
    ALLERGY: "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
    CONDITION: "http://terminology.hl7.org/CodeSystem/condition-clinical",
}
_VERIFICATION = {
    ALLERGY: "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
    CONDITION: "http://terminology.hl7.org/CodeSystem/condition-ver-status",
}


def evidence_in(bindings: Mapping[str, Any]) -> list[Mention]:
    """The note mentions behind the facts a finding bound (each once, in binding order)."""
    out: list[Mention] = []
    for key, value in bindings.items():
        if key.endswith("_all"):
            continue
        mention = getattr(value, "evidence", None)
        if isinstance(mention, Mention) and mention not in out:
            out.append(mention)
    return out


def who_decided(mention: Mention) -> str:
    if mention.ai_assisted:
        return f"AI-assisted: {READER} with the on-premises model {mention.model_id} ({mention.decided_by})"
    return READER


def evidence_markdown(mentions: list[Mention]) -> str:
    lines = ["**From the clinical notes** (not coded in the chart; check the note before acting):"]
    for m in mentions:
        when = m.document_date.date().isoformat() if m.document_date else "undated"
        quote = " ".join(m.sentence.split())
        status = "" if m.status == PRESENT else f" ({m.status})"
        reaction = f"; reaction: {m.reaction}" if m.reaction else ""
        lines.append(
            f"> {quote}\n\n— *{m.document_title}*, {when} (`{m.document}`): **{m.label}**{status}{reaction}; "
            f"found by {who_decided(m)}."
        )
    return "\n\n".join(lines)


def _concept(m: Mention) -> dict:
    concept: dict[str, Any] = {"text": m.label}
    if m.codes:
        concept["coding"] = [{"system": s, "code": c, "display": m.display} for s, c in m.codes]
    return concept


def _note(m: Mention) -> list[dict]:
    when = m.document_date.date().isoformat() if m.document_date else "undated"
    return [{"text": f"From {m.document_title} ({when}, {m.document}): {' '.join(m.sentence.split())}"}]


def record_resource(m: Mention, patient_id: str) -> dict | None:
    """The coded resource that would record this mention (unconfirmed, citing the note)."""
    subject = {"reference": f"Patient/{patient_id}"}
    if m.kind == ALLERGY:
        resource: dict[str, Any] = {
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{"system": _CLINICAL[ALLERGY], "code": "active"}]},
            "verificationStatus": {"coding": [{"system": _VERIFICATION[ALLERGY], "code": "unconfirmed"}]},
            "category": ["medication"],
            "code": _concept(m),
            "patient": subject,
            "note": _note(m),
        }
        if m.reaction:
            resource["reaction"] = [{"manifestation": [{"text": m.reaction}]}]
        return resource
    if m.kind == MEDICATION:
        return {
            "resourceType": "MedicationStatement",
            "status": "active",
            "medicationCodeableConcept": _concept(m),
            "subject": subject,
            "derivedFrom": [{"reference": m.document}],
            "note": _note(m),
        }
    if m.kind == CONDITION:
        return {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {"system": _CLINICAL[CONDITION], "code": "active" if m.status == PRESENT else "resolved"}
                ]
            },
            "verificationStatus": {"coding": [{"system": _VERIFICATION[CONDITION], "code": "unconfirmed"}]},
            "code": _concept(m),
            "subject": subject,
            "evidence": [{"detail": [{"reference": m.document}]}],
            "note": _note(m),
        }
    return None


def record_suggestions(mentions: list[Mention], patient_id: str) -> list[dict]:
    out = []
    for m in mentions:
        resource = record_resource(m, patient_id)
        if resource is None:
            continue
        what = {
            ALLERGY: f"the allergy to {m.label}",
            MEDICATION: f"{m.label} as a medication the patient takes",
            CONDITION: m.display,
        }[m.kind]
        label = f"Record {what} in the chart (from the note of {_date(m)}, unconfirmed)"
        out.append(
            {
                "label": label,
                "uuid": str(uuid.uuid4()),
                "actions": [{"type": "create", "description": label, "resource": resource}],
            }
        )
    return out


def _date(m: Mention) -> str:
    return m.document_date.date().isoformat() if m.document_date else "undated"
