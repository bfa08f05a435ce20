"""Rule test cases: every rule ships cases that must fire and cases that must stay silent.

Cases are written in a compact form (see rules/README.md) and expanded here into real FHIR R4
resources, which then go through the same validation, facts builder, engine and card builder as a
live hook call. Used by ``cds-service rules test`` and by the test suite.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..ehr.documents import read_documents
from ..ehr.validation import ResourceValidator
from ..errors import InvalidRequest
from ..protocol.cards import cards_for
from .engine import evaluate_rule
from .facts import FactsBuilder
from .note_extraction import NoteReader
from .rule_model import Rule, Rulebook
from .terminology import LOINC, RXNORM, SNOMED, Terminology

PATIENT_ID = "case-patient"
USER = "Practitioner/case-user"
_SYSTEMS = {
    "rxnorm": RXNORM,
    "loinc": LOINC,
    "snomed": SNOMED,
    "sct": SNOMED,
    "icd10": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd-10-cm": "http://hl7.org/fhir/sid/icd-10-cm",
}


def _coding(spec: str, default_system: str) -> dict:
    system, sep, code = spec.partition("|")
    if not sep:
        system, code = default_system, spec
    return {"system": _SYSTEMS.get(system.lower(), system), "code": code}


_ROUTE_CODES = {  # compact route word -> SNOMED CT route of administration
    "oral": ("26643006", "Oral route"),
    "topical": ("6064005", "Topical route"),
    "transdermal": ("45890007", "Transdermal route"),
    "ophthalmic": ("54485002", "Ophthalmic route"),
    "otic": ("10547007", "Otic route"),
    "nasal": ("46713006", "Nasal route"),
    "inhaled": ("447694001", "Respiratory tract route"),
    "rectal": ("37161004", "Rectal route"),
    "vaginal": ("16857009", "Vaginal route"),
    "parenteral": ("47625008", "Intravenous route"),
}


def _route(word: str) -> dict:
    code, display = _ROUTE_CODES[word]
    return {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display}


def _concept(item: dict, default_system: str) -> dict:
    concept: dict[str, Any] = {}
    codes = item.get("code")
    if codes:
        concept["coding"] = [
            _coding(c, default_system) for c in ([codes] if isinstance(codes, str) else codes)
        ]
        if item.get("text"):
            concept["coding"][0]["display"] = item["text"]
    if item.get("text"):
        concept["text"] = item["text"]
    return concept


class CaseBuilder:
    """Expands compact cases into FHIR resources. Rule cases use the defaults; the sandbox's hand-made
    patients choose their own patient id, user and resource-id prefix (ids unique across patients)."""

    def __init__(self, today: date, *, patient_id: str = PATIENT_ID, user: str = USER, id_prefix: str = ""):
        self.today = today
        self.now = datetime(today.year, today.month, today.day, 12, tzinfo=UTC)
        self.counter = 0
        self.patient_id = patient_id
        self.user = user
        self.id_prefix = id_prefix
        self.referenced: list[dict] = []  # Medications named by reference (`byReference: true`)

    @property
    def _subject(self) -> dict:
        return {"reference": f"Patient/{self.patient_id}"}

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{self.id_prefix}{prefix}-{self.counter}"

    def _when(self, days_ago) -> str:
        return (self.now - timedelta(days=float(days_ago))).isoformat()

    def patient(self, spec: dict | None) -> dict:
        spec = dict(spec or {})
        age = spec.pop("age", 60)
        birth = spec.pop("birthDate", None) or date(self.today.year - int(age), 1, 1).isoformat()
        if isinstance(birth, date):
            birth = birth.isoformat()
        name = spec.get("name")
        if isinstance(name, dict):  # compact {given, family} -> HumanName list
            given = name.get("given")
            spec["name"] = [
                {
                    **({"given": [given] if isinstance(given, str) else list(given)} if given else {}),
                    **({"family": name["family"]} if name.get("family") else {}),
                }
            ]
        return {
            "resourceType": "Patient",
            "id": self.patient_id,
            "birthDate": birth,
            "gender": spec.pop("gender", "female"),
            **spec,
        }

    def medication(self, item, *, draft: bool) -> dict:
        item = {"text": item} if isinstance(item, str) else dict(item)
        rtype = item.get("resourceType", "MedicationRequest")
        if rtype != "MedicationRequest":
            return self._medication_record(item, rtype)
        r: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": item.get("id") or self._id("draft" if draft else "med"),
            "status": item.get("status", "draft" if draft else "active"),
            "intent": item.get("intent", "order"),
            "medicationCodeableConcept": _concept(item, RXNORM),
            "subject": self._subject,
            "authoredOn": self._when(item.get("authoredDaysAgo", 0 if draft else 30)),
            "requester": {"reference": item.get("requester", self.user)},
        }
        if item.get("category"):
            r["category"] = [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                            "code": item["category"],
                        }
                    ]
                }
            ]
        dosage: dict[str, Any] = {}
        if item.get("dose"):
            dose = item["dose"]
            dosage["doseAndRate"] = [
                {
                    "doseQuantity": {
                        "value": dose["value"],
                        "unit": dose.get("unit", "tablet"),
                        **(
                            {"code": dose["unit"], "system": "http://unitsofmeasure.org"}
                            if dose.get("unit") in ("mg", "ug", "mL")
                            else {}
                        ),
                    }
                }
            ]
        if item.get("perDay"):
            dosage["timing"] = {"repeat": {"frequency": item["perDay"], "period": 1, "periodUnit": "d"}}
        if item.get("route"):
            dosage["route"] = _route(item["route"])
        if dosage:
            r["dosageInstruction"] = [dosage]
        dispense: dict[str, Any] = {}
        if item.get("supplyDays") is not None:
            dispense["expectedSupplyDuration"] = {
                "value": item["supplyDays"],
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            }
        if item.get("validityDays") is not None:
            start = self.now - timedelta(days=float(item.get("authoredDaysAgo", 0 if draft else 30)))
            dispense["validityPeriod"] = {
                "start": start.isoformat(),
                "end": (start + timedelta(days=item["validityDays"])).isoformat(),
            }
        if dispense:
            r["dispenseRequest"] = dispense
        return self._by_reference(r, item)

    def _by_reference(self, r: dict, item: dict) -> dict:
        """`byReference: true`: the drug is named by a Medication resource (`medicationReference`), as many
        EHRs record it; the Medication joins the chart's resources."""
        if not item.get("byReference"):
            return r
        medication = {
            "resourceType": "Medication",
            "id": self._id("medication"),
            "code": r.pop("medicationCodeableConcept"),
        }
        r["medicationReference"] = {"reference": f"Medication/{medication['id']}"}
        self.referenced.append(medication)
        return r

    def _medication_record(self, item: dict, rtype: str) -> dict:
        """A statement, dispense or administration: what the patient takes without an order here."""
        days_ago = float(item.get("authoredDaysAgo", 10))
        when = self._when(days_ago)
        r: dict[str, Any] = {
            "resourceType": rtype,
            "id": item.get("id") or self._id(rtype.removeprefix("Medication").lower()),
            "medicationCodeableConcept": _concept(item, RXNORM),
            "subject": self._subject,
        }
        dosage: dict[str, Any] = {"route": _route(item["route"])} if item.get("route") else {}
        if rtype == "MedicationStatement":
            r["status"] = item.get("status", "active")
            r["effectivePeriod"] = {"start": when}
            r["dateAsserted"] = when
            r["informationSource"] = {"reference": f"Patient/{self.patient_id}"}
            if dosage:
                r["dosage"] = [dosage]
        elif rtype == "MedicationDispense":
            r["status"] = item.get("status", "completed")
            r["whenHandedOver"] = when
            r["daysSupply"] = {
                "value": item.get("supplyDays", 30),
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            }
            if dosage:
                r["dosageInstruction"] = [dosage]
        elif rtype == "MedicationAdministration":
            r["status"] = item.get("status", "completed")
            r["effectiveDateTime"] = when
            if dosage:
                r["dosage"] = dosage
        else:
            raise ValueError(f"a case medication cannot be a {rtype}")
        return self._by_reference(r, item)

    def condition(self, item) -> dict:
        item = {"text": item} if isinstance(item, str) else dict(item)
        r = {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "code": _concept(item, SNOMED),
            "subject": self._subject,
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": item.get("clinicalStatus", "active"),
                    }
                ]
            },
            "recordedDate": self._when(item.get("daysAgo", 100)),
        }
        if item.get("category"):
            r["category"] = [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": item["category"],
                        }
                    ]
                }
            ]
        return r

    def allergy(self, item) -> dict:
        item = {"text": item} if isinstance(item, str) else dict(item)
        r = {
            "resourceType": "AllergyIntolerance",
            "id": self._id("allergy"),
            "code": _concept(item, RXNORM),
            "patient": self._subject,
            "category": ["medication"],
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "code": item.get("clinicalStatus", "active"),
                    }
                ]
            },
        }
        if item.get("criticality"):
            r["criticality"] = item["criticality"]
        return r

    def observation(self, item) -> dict:
        item = dict(item)
        r: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "status": item.get("status", "final"),
            "code": _concept(item, LOINC),
            "subject": self._subject,
            "effectiveDateTime": self._when(item.get("daysAgo", 1)),
        }
        if "value" in item:
            r["valueQuantity"] = {
                "value": item["value"],
                **({"unit": item["unit"]} if item.get("unit") else {}),
            }
        if item.get("valueCode"):
            r["valueCodeableConcept"] = {"coding": [_coding(item["valueCode"], SNOMED)]}
        if item.get("interpretation"):
            r["interpretation"] = [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            "code": item["interpretation"],
                        }
                    ]
                }
            ]
        if item.get("category"):
            r["category"] = [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": item["category"],
                        }
                    ]
                }
            ]
        return r

    def event(self, item) -> dict:
        item = dict(item)
        rtype = item.get("type", "Procedure")
        r: dict[str, Any] = {"resourceType": rtype, "id": self._id(rtype.lower())}
        when = self._when(item.get("daysAgo", 10))
        subject = self._subject
        if rtype == "Encounter":
            r.update(
                {
                    "status": item.get("status", "finished"),
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": item.get("class", "AMB"),
                    },
                    "subject": subject,
                    "period": {"start": when, "end": when},
                }
            )
            if item.get("code"):
                r["type"] = [_concept(item, SNOMED)]
            if item.get("dischargeDisposition"):
                r["hospitalization"] = {
                    "dischargeDisposition": {"coding": [_coding(item["dischargeDisposition"], SNOMED)]}
                }
        elif rtype == "CarePlan":
            r.update(
                {
                    "status": item.get("status", "active"),
                    "intent": "plan",
                    "subject": subject,
                    "created": when,
                    "category": [_concept(item, LOINC)],
                    "author": {"reference": item.get("author", self.user)},
                }
            )
        elif rtype == "ServiceRequest":
            r.update(
                {
                    "status": item.get("status", "active"),
                    "intent": "order",
                    "subject": subject,
                    "code": _concept(item, SNOMED),
                    "authoredOn": when,
                }
            )
        else:
            r.update(
                {
                    "status": item.get("status", "completed"),
                    "subject": subject,
                    "code": _concept(item, SNOMED),
                    "performedDateTime": when,
                }
            )
            if item.get("performer"):
                r["performer"] = [{"actor": {"reference": item["performer"]}}]
        return r

    def note(self, item) -> dict:
        """A clinical note (DocumentReference) holding `text` inline, base64 as an EHR sends it."""
        item = {"text": item} if isinstance(item, str) else dict(item)
        content_type = item.get("contentType", "text/plain")
        return {
            "resourceType": "DocumentReference",
            "id": self._id("note"),
            "status": item.get("status", "current"),
            "type": {"text": item.get("title") or "Progress note"},
            "subject": self._subject,
            "date": self._when(item.get("daysAgo", 1)),
            "content": [
                {
                    "attachment": {
                        "contentType": f"{content_type}; charset=utf-8",
                        "data": base64.b64encode(str(item["text"]).encode()).decode("ascii"),
                    }
                }
            ],
        }

    def report(self, item) -> dict:
        """A DiagnosticReport whose finding is its `conclusion` text."""
        item = {"text": item} if isinstance(item, str) else dict(item)
        return {
            "resourceType": "DiagnosticReport",
            "id": self._id("report"),
            "status": item.get("status", "final"),
            "code": {"text": item.get("title") or "Report"},
            "subject": self._subject,
            "effectiveDateTime": self._when(item.get("daysAgo", 1)),
            "conclusion": str(item["text"]),
        }

    def build(self, case: dict) -> tuple[list[dict], list[dict]]:
        resources = [self.patient(case.get("patient"))]
        resources += [self.medication(m, draft=False) for m in case.get("medications") or []]
        resources += [self.condition(c) for c in case.get("conditions") or []]
        resources += [self.allergy(a) for a in case.get("allergies") or []]
        resources += [self.observation(o) for o in case.get("observations") or []]
        resources += [self.event(e) for e in case.get("events") or []]
        resources += [self.note(n) for n in case.get("notes") or []]
        resources += [self.report(r) for r in case.get("reports") or []]
        resources += [dict(r) for r in case.get("resources") or []]
        drafts = [self.medication(m, draft=True) for m in case.get("draftOrders") or []]
        resources += self.referenced
        self.referenced = []
        return resources, drafts


@dataclass
class CaseResult:
    rule: Rule
    name: str
    expected: str  # fire | silent
    passed: bool
    detail: str = ""


def _today(case: dict) -> date:
    value = case.get("today")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return date.fromisoformat(value)
    return date.today()


def run_case(
    rule: Rule,
    case: dict,
    expected: str,
    builder: FactsBuilder,
    terminology: Terminology,
    validator: ResourceValidator,
    reader: NoteReader,
) -> CaseResult:
    today = _today(case)
    resources, drafts = CaseBuilder(today).build(case)
    try:
        validator.check(
            [(f"case.resources[{i}]", r) for i, r in enumerate(resources)]
            + [(f"case.draftOrders[{i}]", r) for i, r in enumerate(drafts)]
        )
    except InvalidRequest as exc:
        return CaseResult(
            rule, case["name"], expected, False, f"case data is not valid FHIR: {exc.diagnostics}"
        )
    notes = read_documents(resources, None)  # as a hook call reads them: notes and reports, inline text
    mentions = [m for text in notes.texts for m in reader.read(text)]
    hook = case.get("hook") or rule.hooks[0]
    if hook == "patient-view" and drafts:
        return CaseResult(rule, case["name"], expected, False, "patient-view cases cannot have draftOrders")
    selections: tuple[str, ...] = ()
    if hook == "order-select":  # the selected drafts (default: all), as an order-select call names them
        refs = [f"{d['resourceType']}/{d['id']}" for d in drafts]
        selections = tuple(case.get("selections") or refs)
        unknown = [s for s in selections if s not in refs]
        if unknown:
            return CaseResult(
                rule, case["name"], expected, False, f"selections name no draft order: {unknown}"
            )
    facts = builder.build(
        resources,
        patient_id=PATIENT_ID,
        draft_orders=drafts,
        today=today,
        user_id=USER,
        mentions=mentions,
        hook=hook,
        selections=selections,
    )
    result = evaluate_rule(rule, facts, terminology)
    if result.outcome == "error":
        return CaseResult(rule, case["name"], expected, False, f"rule error: {result.reason}")
    fired = result.outcome == "fired"
    if fired != (expected == "fire"):
        return CaseResult(
            rule,
            case["name"],
            expected,
            False,
            f"expected to {expected}, but it {'fired' if fired else 'stayed silent'}",
        )
    if fired:
        issued, rejected = cards_for(list(result.findings), facts)
        if rejected:
            return CaseResult(rule, case["name"], expected, False, f"card invalid: {rejected[0].problem}")
        if case.get("indicator") and issued[0].card["indicator"] != case["indicator"]:
            return CaseResult(
                rule,
                case["name"],
                expected,
                False,
                f"indicator {issued[0].card['indicator']}, expected {case['indicator']}",
            )
    return CaseResult(rule, case["name"], expected, True)


def run_rule_cases(
    rulebook: Rulebook,
    builder: FactsBuilder,
    terminology: Terminology,
    rule_ids: list[str] | None = None,
    reader: NoteReader | None = None,
) -> list[CaseResult]:
    validator = ResourceValidator()
    reader = reader or NoteReader(terminology)
    results = []
    for rule in rulebook.rules:
        if (rule_ids and rule.id not in rule_ids) or rule.status == "retired":
            continue
        for expected in ("fire", "silent"):
            for case in rule.cases.get(expected) or []:
                results.append(run_case(rule, case, expected, builder, terminology, validator, reader))
    return results
