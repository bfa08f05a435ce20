"""The sandbox's hand-made patients (``fhir/samples/sandbox/patients.yaml``) and what each demonstrates.

Each patient is a small chart in the compact case form of the rule files, expanded into FHIR R4 resources
by the rule cases' `CaseBuilder` with dates counted back from `today`, so look-back rules always fire.
Resource ids start with the patient id, so the charts can share one FHIR store. A demonstration names a
service, its hook, the draft orders to sign and the rules that must fire (none for a chart with nothing
to flag); the test suite runs every one through the service, and the sandbox lists them as things to try.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from ..clinical.facts import MEDICATION_TYPES
from ..clinical.routes import ROUTES
from ..clinical.rule_cases import CaseBuilder
from ..clinical.terminology import RXNORM
from ..content import check_schema, read_yaml, relative_name
from ..errors import ContentError, field_path

SANDBOX_USER = "Practitioner/sandbox-clinician"
HOOKS = ("order-sign", "order-select", "patient-view")
# The longest suffix CaseBuilder adds is "-servicerequest-NNN" (19 characters); FHIR ids stop at 64.
MAX_PATIENT_ID = 40

_CODE = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
_DAYS = {"type": "number", "minimum": 0}
_TEXT = {"type": "string", "minLength": 1}


def _item(properties: dict, *, required: list[str] | None = None, string_form: bool = True) -> dict:
    """A compact chart item: an object with exactly these keys (a typo is an error), or just its text.
    One schema for both forms (the object keywords ignore a string), so an error names the bad key."""
    out: dict[str, Any] = {
        "type": ["string", "object"] if string_form else "object",
        "minLength": 1,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    else:
        out["anyOf"] = [{"required": ["text"]}, {"required": ["code"]}]
    return out


_MEDICATION = _item(
    {
        "text": _TEXT,
        "code": _CODE,
        "id": _TEXT,
        "status": _TEXT,
        "intent": _TEXT,
        "authoredDaysAgo": _DAYS,
        "category": _TEXT,
        "dose": {
            "type": "object",
            "properties": {"value": {"type": "number", "exclusiveMinimum": 0}, "unit": _TEXT},
            "required": ["value"],
            "additionalProperties": False,
        },
        "perDay": {"type": "number", "exclusiveMinimum": 0},
        "supplyDays": _DAYS,
        "validityDays": _DAYS,
        "requester": _TEXT,
        "resourceType": {"enum": list(MEDICATION_TYPES)},
        "route": {"enum": list(ROUTES)},
        "byReference": {"type": "boolean"},
    }
)
_CHART_ITEMS = {
    "medications": _MEDICATION,
    "conditions": _item(
        {"text": _TEXT, "code": _CODE, "clinicalStatus": _TEXT, "daysAgo": _DAYS, "category": _TEXT}
    ),
    "allergies": _item(
        {
            "text": _TEXT,
            "code": _CODE,
            "clinicalStatus": _TEXT,
            "criticality": {"enum": ["low", "high", "unable-to-assess"]},
        }
    ),
    "observations": _item(
        {
            "text": _TEXT,
            "code": _CODE,
            "status": _TEXT,
            "daysAgo": _DAYS,
            "value": {"type": "number"},
            "unit": _TEXT,
            "valueCode": _TEXT,
            "interpretation": _TEXT,
            "category": _TEXT,
        },
        required=["code"],
        string_form=False,
    ),
    "events": _item(
        {
            "type": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
            "text": _TEXT,
            "code": _CODE,
            "daysAgo": _DAYS,
            "status": _TEXT,
            "class": _TEXT,
            "dischargeDisposition": _TEXT,
            "author": _TEXT,
            "performer": _TEXT,
        },
        string_form=False,
    ),
    "notes": _item(
        {"text": _TEXT, "contentType": _TEXT, "status": _TEXT, "title": _TEXT, "daysAgo": _DAYS},
        required=["text"],
    ),
    "reports": _item(
        {"text": _TEXT, "status": _TEXT, "title": _TEXT, "daysAgo": _DAYS},
        required=["text"],
    ),
    "resources": {"type": "object", "required": ["resourceType", "id"]},
}
_SCHEMA = {
    "type": "object",
    "required": ["patients"],
    "additionalProperties": False,
    "properties": {
        "patients": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "name", "gender", "description", "demonstrations"],
                "additionalProperties": False,
                "properties": {
                    "id": {
                        "type": "string",
                        "pattern": f"^[A-Za-z0-9][A-Za-z0-9-]{{0,{MAX_PATIENT_ID - 1}}}$",
                    },
                    "name": {
                        "type": "object",
                        "required": ["given", "family"],
                        "additionalProperties": False,
                        "properties": {
                            "given": {"oneOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1}]},
                            "family": _TEXT,
                        },
                    },
                    "gender": {"enum": ["male", "female", "other", "unknown"]},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "birthDate": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                    "description": {"type": "string", "pattern": r"^[^\n]+$"},
                    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9-]+$"}},
                    **{key: {"type": "array", "items": schema} for key, schema in _CHART_ITEMS.items()},
                    "demonstrations": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["service", "hook", "expect"],
                            "additionalProperties": False,
                            "properties": {
                                "service": _TEXT,
                                "hook": {"enum": list(HOOKS)},
                                "draftOrders": {"type": "array", "items": _MEDICATION, "minItems": 1},
                                "expect": {"type": "array", "items": _TEXT, "uniqueItems": True},
                                "noteEvidence": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        }
    },
}
_CHART_KEYS = tuple(_CHART_ITEMS)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_SCHEMA)


@dataclass(frozen=True)
class Demonstration:
    """One thing to try on a patient: call `service` (with these draft orders) and see `expect` fire."""

    patient_id: str
    index: int  # position in the patient's list: "sandbox-x#2" names it
    service: str
    hook: str
    draft_orders: tuple[dict, ...]  # FHIR MedicationRequests, status draft (order-sign only)
    expect: tuple[str, ...]  # rule ids; empty: nothing to flag
    note_evidence: bool = False  # the expected cards rest on what a note or report says

    @property
    def name(self) -> str:
        return f"{self.patient_id}#{self.index} {self.service}"

    def context(self, user: str = SANDBOX_USER) -> dict:
        """The hook request's `context`, as an EHR would send it for this demonstration."""
        out: dict[str, Any] = {"userId": user, "patientId": self.patient_id}
        if self.hook == "order-select":  # the first draft was just chosen; the others are context
            first = self.draft_orders[0]
            out["selections"] = [f"{first['resourceType']}/{first['id']}"]
        if self.hook in ("order-sign", "order-select"):
            out["draftOrders"] = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in self.draft_orders],
            }
        return out


@dataclass(frozen=True)
class SandboxPatient:
    id: str
    name: str  # "Walter Sandbox"
    gender: str
    birth_date: str
    description: str
    tags: tuple[str, ...]
    demonstrations: tuple[Demonstration, ...]
    resources: list[dict] = field(repr=False)  # the Patient first, then the chart
    try_orders: list[dict] = field(default_factory=list, repr=False)  # distinct draft orders to offer

    @property
    def patient(self) -> dict:
        return self.resources[0]


def _content_name(path: Path) -> str:
    """`fhir/samples/sandbox/patients.yaml` when under a content folder, else the path as given."""
    for parent in path.parents:
        if parent.name == "fhir":
            return relative_name(path, parent)
    return str(path)


def _try_order(spec: Any) -> dict:
    """What the page offers to order: the RxNorm code and display, plus the order details a rule reads
    (an opioid rule needs a community order with its days of supply)."""
    spec = {"text": spec} if isinstance(spec, str) else spec
    code = spec.get("code")
    code = code if isinstance(code, str) else (code or [None])[0]
    system, _, value = (code or "").rpartition("|")
    out: dict[str, Any] = {
        "system": RXNORM,
        "code": (value or None) if system.lower() in ("", "rxnorm", RXNORM) else None,
        "display": spec.get("text") or value,
    }
    for key in ("category", "supplyDays", "dose", "perDay"):
        if key in spec:
            out[key] = spec[key]
    return out


def _patient(data: dict, i: int, today: date, rel: str) -> SandboxPatient:
    pid = data["id"]
    where = field_path(["patients", i])
    if "age" in data and "birthDate" in data:
        raise ContentError(rel, where, "give age or birthDate, not both")
    for j, resource in enumerate(data.get("resources") or []):
        if not str(resource["id"]).startswith(f"{pid}-"):
            raise ContentError(
                rel, field_path(["patients", i, "resources", j, "id"]), f"must start with {pid!r}-"
            )
    builder = CaseBuilder(today, patient_id=pid, user=SANDBOX_USER, id_prefix=f"{pid}-")
    person = {"gender": data["gender"], "name": data["name"]}
    for key in ("age", "birthDate"):
        if key in data:
            person[key] = data[key]
    resources, _ = builder.build({"patient": person, **{k: data.get(k) for k in _CHART_KEYS}})
    demonstrations = []
    try_orders: dict[str, dict] = {}  # by content: the same drug with another supply is another offer
    for j, demo in enumerate(data["demonstrations"]):
        drafts = demo.get("draftOrders") or []
        if (demo["hook"] != "patient-view") != bool(drafts):
            raise ContentError(
                rel,
                field_path(["patients", i, "demonstrations", j, "draftOrders"]),
                "an order-sign or order-select demonstration needs draftOrders; a patient-view one has none",
            )
        for spec in drafts:
            offer = _try_order(spec)
            key = json.dumps(offer, sort_keys=True)
            if key not in try_orders:
                # the order exactly as the demonstration signs it: the page adds it to the drafts as is
                try_orders[key] = {**offer, "draft": builder.medication(spec, draft=True)}
        demonstrations.append(
            Demonstration(
                patient_id=pid,
                index=j,
                service=demo["service"],
                hook=demo["hook"],
                draft_orders=tuple(builder.medication(d, draft=True) for d in drafts),
                expect=tuple(demo["expect"]),
                note_evidence=bool(demo.get("noteEvidence")),
            )
        )
    given = data["name"]["given"]
    given = [given] if isinstance(given, str) else given
    return SandboxPatient(
        id=pid,
        name=" ".join([*given, data["name"]["family"]]),
        gender=data["gender"],
        birth_date=resources[0]["birthDate"],
        description=data["description"],
        tags=tuple(data.get("tags") or ()),
        demonstrations=tuple(demonstrations),
        resources=resources,
        try_orders=list(try_orders.values()),
    )


def load_patients(path: Path, today: date) -> list[SandboxPatient]:
    """Every hand-made patient in `path`, its chart dated back from `today`; ContentError names the
    file and the field of the first problem."""
    path = Path(path)
    rel = _content_name(path)
    data = read_yaml(path, rel)
    # YAML reads an unquoted 1950-04-02 as a date; the schema (and FHIR) want the text.
    listed = data.get("patients") if isinstance(data, dict) else None
    for patient in listed if isinstance(listed, list) else []:
        if isinstance(patient, dict) and isinstance(patient.get("birthDate"), date):
            patient["birthDate"] = patient["birthDate"].isoformat()
    check_schema(_validator(), data, rel)
    patients: list[SandboxPatient] = []
    seen: dict[str, str] = {}  # resource "Type/id" -> patient id
    for i, item in enumerate(data["patients"]):
        patient = _patient(item, i, today, rel)
        if any(p.id == patient.id for p in patients):
            raise ContentError(
                rel, field_path(["patients", i, "id"]), f"patient {patient.id!r} is defined twice"
            )
        for resource in patient.resources:
            key = f"{resource['resourceType']}/{resource['id']}"
            if key in seen:
                raise ContentError(
                    rel, field_path(["patients", i]), f"{key} is also a resource of {seen[key]}"
                )
            seen[key] = patient.id
        patients.append(patient)
    return patients


def demonstrations(patients: list[SandboxPatient]) -> list[tuple[SandboxPatient, Demonstration]]:
    """Every demonstration with its patient, in file order: what the tests (and the sandbox) run."""
    return [(p, d) for p in patients for d in p.demonstrations]
