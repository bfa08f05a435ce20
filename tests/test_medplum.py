"""The fetch path against a FHIR server nobody on this project wrote: Medplum's in-memory FHIR router
(npm @medplum/fhir-router 4.5.2 behind tests/medplum/server.mjs), started once for this module and
loaded with sample patients: bundled Synthea patients (dates shifted so each chart ends yesterday), a
synthetic opioid patient whose history reaches past the templates' date windows, and one whose data sit
just inside the rules' look-backs (a window narrower than a rule's look-back changes its outcomes).

Every service is called for every patient twice: with no prefetch (each key fetched from Medplum through
the service's own templates: date windows, status, category, code, _count) and with a full prefetch
built from the same stored data (every resource of the template's type, no filter, no window). Cards
and every rule outcome must be equal: the templates ask for all the rules read, and the fetch path
reads it correctly from a real server.

Needs Node (>= 20.19) and `npm ci --prefix tests/medplum` (`make test` runs it). Without node the
tests skip locally and fail in CI (CI=1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
from builders import draft_bundle
from medplum_router import MedplumRouter, MedplumUnavailable, unavailable_reason
from shared import bundled_content

from cds_service.clinical.rule_cases import USER, CaseBuilder

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "fhir" / "samples" / "synthea-r4"
# Synthea patients whose active medications exercise the rules (warfarin, digoxin with verapamil, a
# statin, opioids with an SSRI, a benzodiazepine, an NSAID) and one with none of these.
SYNTHEA = ("Christopher_Abshire", "Roberto_Graham", "Alberto_Atencio", "Max_Dicki", "Matt_Mosciski")
SYNTHETIC = "case-patient"
EDGE = "edge-patient"
TOKEN = "medplum-test-token"
FHIR_AUTH = {
    "fhirAuthorization": {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
}

_spec = importlib.util.spec_from_file_location(
    "roll_dates", ROOT / "benchmarks" / "cdc-opioid" / "roll_dates.py"
)
roll_dates = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roll_dates)

OXYCODONE_ER = {
    "text": "12 HR oxycodone hydrochloride 10 MG Extended Release Oral Tablet",
    "code": "rxnorm|1049502",
    "category": "community",
    "dose": {"value": 1, "unit": "tablet"},
    "perDay": 2,
}
OXYCODONE_IR = {
    "text": "oxycodone hydrochloride 5 MG Oral Tablet",
    "code": "rxnorm|1049621",
    "category": "community",
}
# The order-sign calls' drafts: a chronic and an acute opioid, an NSAID, an ACE inhibitor, metformin.
DRAFTS = [
    {**OXYCODONE_ER, "supplyDays": 30},
    {**OXYCODONE_IR, "supplyDays": 10, "dose": {"value": 1, "unit": "tablet"}, "perDay": 4},
    {"text": "Ibuprofen 400 MG Oral Tablet", "code": "rxnorm|197806", "category": "community"},
    {"text": "lisinopril 10 MG Oral Tablet", "code": "rxnorm|314076", "category": "community"},
    {"text": "metformin hydrochloride 500 MG Oral Tablet", "code": "rxnorm|860975", "category": "community"},
]
# On chronic opioids with a benzodiazepine, with data inside and outside every template's window.
OPIOID_CHART = {
    "patient": {"age": 54, "gender": "male"},
    "medications": [
        {**OXYCODONE_ER, "authoredDaysAgo": 40, "supplyDays": 90},
        {
            "text": "diazepam 5 MG Oral Tablet",
            "code": "rxnorm|197591",
            "category": "community",
            "authoredDaysAgo": 20,
            "supplyDays": 30,
        },
        {**OXYCODONE_IR, "status": "completed", "authoredDaysAgo": 800, "supplyDays": 30},
        {**OXYCODONE_IR, "status": "completed", "authoredDaysAgo": 75, "supplyDays": 7},
        {
            "text": "sertraline 50 MG Oral Tablet",
            "code": "rxnorm|312940",
            "status": "stopped",
            "authoredDaysAgo": 200,
        },
    ],
    "conditions": [{"code": "snomed|82423001", "text": "Chronic pain", "daysAgo": 400}],
    "observations": [
        {"code": "loinc|3394-4", "valueCode": "snomed|10828004", "daysAgo": 100, "category": "laboratory"},
        {"code": "loinc|3394-4", "valueCode": "snomed|10828004", "daysAgo": 500, "category": "laboratory"},
        {"code": "loinc|6298-4", "value": 5.9, "unit": "mmol/L", "daysAgo": 3, "category": "laboratory"},
        {"code": "loinc|44261-6", "value": 14, "daysAgo": 250, "category": "survey"},
        {"code": "loinc|44261-6", "value": 16, "daysAgo": 420, "category": "survey"},
    ],
    "events": [
        {"type": "Encounter", "code": "snomed|185463005", "daysAgo": 30},
        {"type": "Encounter", "code": "snomed|185463005", "daysAgo": 500},
        {"type": "Procedure", "code": "snomed|461621000124108", "daysAgo": 400},
        {"type": "Procedure", "code": "snomed|454281000124100", "daysAgo": 120},
    ],
}


# Data a few days inside the longest look-back of the rules that read it: 366 days (urine drug tests,
# office visits), 365 (eGFR, PHQ-9), 730 (active opioid and benzodiazepine orders), 90 (PDMP review).
EDGE_CHART = {
    "patient": {"age": 61, "gender": "female"},
    "medications": [
        {**OXYCODONE_ER, "authoredDaysAgo": 700, "supplyDays": 90},
        {
            "text": "alprazolam 0.5 MG Oral Tablet",
            "code": "rxnorm|308047",
            "category": "community",
            "authoredDaysAgo": 700,
            "supplyDays": 30,
        },
    ],
    "observations": [
        {"code": "loinc|3394-4", "valueCode": "snomed|10828004", "daysAgo": 355, "category": "laboratory"},
        {
            "code": "loinc|33914-3",
            "value": 24,
            "unit": "mL/min/{1.73_m2}",
            "daysAgo": 355,
            "category": "laboratory",
        },
        {"code": "loinc|44261-6", "value": 15, "daysAgo": 355, "category": "survey"},
    ],
    "events": [
        {"type": "Encounter", "code": "snomed|185463005", "daysAgo": 355},
        {"type": "Procedure", "code": "snomed|461621000124108", "daysAgo": 85},
    ],
}


def synthetic_patient(case: dict, patient_id: str) -> list[dict]:
    """A compact case (rules/README.md) as FHIR resources of its own patient id, ids unique in the server."""
    resources, _ = CaseBuilder(date.today()).build(case)
    text = (
        json.dumps(resources)
        .replace(f'"{SYNTHETIC}"', f'"{patient_id}"')
        .replace(f"Patient/{SYNTHETIC}", f"Patient/{patient_id}")
    )
    resources = json.loads(text)
    for r in resources:
        if r["resourceType"] != "Patient":
            r["id"] = f"{patient_id}-{r['id']}"
    return resources


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (the Medplum integration tests must run in CI)")
    pytest.skip(reason)


class Medplum(MedplumRouter):
    """The router, loaded patient by patient; a missing router skips locally and fails in CI."""

    def __init__(self, tmp: Path):
        reason = unavailable_reason()
        if reason:
            _unavailable(reason)
        try:
            super().__init__(tmp)
        except MedplumUnavailable as exc:
            pytest.fail(str(exc))
        self.load_seconds = 0.0
        self.stored: dict[str, list[dict]] = {}  # patient id -> every resource as Medplum stored it

    def load(self, patient_id: str, resources: list[dict]) -> None:
        start = time.perf_counter()
        self.stored[patient_id] = self.put_batch(resources, timeout=60)
        self.load_seconds += time.perf_counter() - start


def _latest_date(resources: list[dict]) -> date:
    found = []

    def walk(node, key=None):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key not in roll_dates.SKIP_KEYS and roll_dates.FULL_DATE.match(node):
            found.append(date.fromisoformat(node[:10]))

    walk(resources)
    return max(found)


def synthea_patient(name: str, types: set[str]) -> tuple[str, list[dict]]:
    """The patient's resources of the types the services read, shifted so the chart ends yesterday."""
    (path,) = SAMPLES.glob(f"{name}_*.json")
    resources = [e["resource"] for e in json.loads(path.read_text())["entry"]]
    resources = [r for r in resources if r["resourceType"] in types]
    shift = (date.today() - timedelta(days=1) - _latest_date(resources)).days
    resources = [roll_dates.roll_node(r, date.today(), shift, False) for r in resources]
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    return patient_id, resources


@pytest.fixture(scope="module")
def medplum(tmp_path_factory):
    services = bundled_content().services
    types = {t.resource_type for s in services for t in s.templates}
    server = Medplum(tmp_path_factory.mktemp("medplum"))
    try:
        for name in SYNTHEA:
            server.load(*synthea_patient(name, types))
        server.load(SYNTHETIC, synthetic_patient(OPIOID_CHART, SYNTHETIC))
        server.load(EDGE, synthetic_patient(EDGE_CHART, EDGE))
        yield server
    finally:
        server.stop()
        print(
            f"\nMedplum: started in {server.start_seconds:.2f} s, "
            f"{sum(map(len, server.stored.values()))} resources of {len(server.stored)} patients loaded "
            f"in {server.load_seconds:.2f} s"
        )


def _of_patient(resource: dict, patient_id: str) -> bool:
    if resource["resourceType"] == "Patient":
        return resource["id"] == patient_id
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
    return ref == f"Patient/{patient_id}"


def full_prefetch(service, stored: list[dict], patient_id: str) -> dict:
    """What an EHR holding the same data could send: per key, every resource of the template's type."""
    prefetch = {}
    for template in service.templates:
        of_type = [
            r for r in stored if r["resourceType"] == template.resource_type and _of_patient(r, patient_id)
        ]
        if template.is_read:
            prefetch[template.key] = of_type[0]
        else:
            prefetch[template.key] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in of_type],
            }
    return prefetch


def hook_request(service, patient_id: str, drafts=DRAFTS) -> dict:
    context: dict = {"userId": USER, "patientId": patient_id}
    if service.hook in ("order-sign", "order-select"):
        _, drafts = CaseBuilder(date.today()).build({"draftOrders": drafts})
        for draft in drafts:
            draft["subject"] = {"reference": f"Patient/{patient_id}"}
        context["draftOrders"] = draft_bundle(drafts)
        if service.hook == "order-select":  # the first draft just chosen, the others already written
            context["selections"] = [f"{drafts[0]['resourceType']}/{drafts[0]['id']}"]
    return {"hook": service.hook, "hookInstance": str(uuid.uuid4()), "context": context}


def outcome(app, response) -> tuple:
    """What the clinician and the auditor see: status, cards, and every rule's outcome and evidence."""
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    cards = sorted((c["summary"], c["indicator"]) for c in response.get_json()["cards"])
    rules = sorted((r["id"], r["outcome"], tuple(r.get("refs", ()))) for r in record["rules"])
    return response.status_code, cards, rules, record


PATIENTS = [*SYNTHEA, SYNTHETIC, EDGE]
# Warfarin and oxycodone named only through Medication resources (medicationReference), and naproxen
# known only from a pharmacy fill: what the black-box run found invisible.
BY_REFERENCE = "by-reference-patient"
BY_REFERENCE_CHART = {
    "patient": {"age": 67, "gender": "male"},
    "medications": [
        {"text": "Warfarin Sodium 5 MG Oral Tablet", "code": "rxnorm|855332", "byReference": True},
        {**OXYCODONE_ER, "byReference": True, "authoredDaysAgo": 20, "supplyDays": 30},
        {"resourceType": "MedicationDispense", "text": "Naproxen 500 MG Oral Tablet", "authoredDaysAgo": 5},
    ],
}


def _by_reference_chart(patient_id: str) -> list[dict]:
    resources = synthetic_patient(BY_REFERENCE_CHART, patient_id)
    for r in resources:  # the Medications got the patient's prefix: so do the references to them
        ref = (r.get("medicationReference") or {}).get("reference")
        if ref:
            r["medicationReference"]["reference"] = ref.replace("Medication/", f"Medication/{patient_id}-")
    return resources


@pytest.mark.parametrize(
    ("service", "drafts", "expected"),
    [
        (
            "medication-order-check",
            ["Ibuprofen 400 MG Oral Tablet"],
            {"ddi-warfarin-nsaid", "duplicate-class"},
        ),
        (
            "medication-order-check",
            [{"text": "Lorazepam 1 MG Oral Tablet", "code": "rxnorm|197900"}],
            {"ddi-opioid-benzodiazepine"},
        ),
        (
            "opioidcds-11-order-sign",
            [{"text": "Lorazepam 1 MG Oral Tablet", "code": "rxnorm|197900", "category": "community"}],
            {"cdc-opioid-rec11-opioid-with-benzodiazepine-order-sign"},
        ),
    ],
)
def test_medications_by_reference_and_from_fills_are_seen_through_medplum(
    medplum, make_app, service, drafts, expected
):
    if BY_REFERENCE not in medplum.stored:
        medplum.load(BY_REFERENCE, _by_reference_chart(BY_REFERENCE))
    app = make_app(CDS_FHIR_ALLOWED_SERVERS=medplum.base_url)
    definition = next(s for s in bundled_content().services if s.id == service)
    body = {**hook_request(definition, BY_REFERENCE, drafts), "fhirServer": medplum.base_url, **FHIR_AUTH}
    response = app.test_client().post(f"/cds-services/{service}", json=body)
    assert response.status_code == 200, response.get_json()
    *_, record = outcome(app, response)
    fired = {r["id"] for r in record["rules"] if r["outcome"] == "fired"}
    assert fired == expected, [(r["id"], r["outcome"], r.get("reason")) for r in record["rules"]]
    unidentified = (record.get("medicationReferences") or {}).get("unidentified") or []
    assert unidentified == []  # every drug was identified: through _include, or a read of Medication/<id>


@pytest.mark.parametrize("patient", PATIENTS)
def test_every_service_fetching_from_medplum_agrees_with_full_prefetch(medplum, make_app, patient):
    app = make_app(CDS_FHIR_ALLOWED_SERVERS=medplum.base_url)
    http = app.test_client()
    patient_id = patient if patient in (SYNTHETIC, EDGE) else synthea_patient(patient, {"Patient"})[0]
    stored = medplum.stored[patient_id]
    disagreements, fired = [], 0
    for service in bundled_content().services:
        fetched_request = {**hook_request(service, patient_id), "fhirServer": medplum.base_url, **FHIR_AUTH}
        sent_request = {
            **hook_request(service, patient_id),
            "prefetch": full_prefetch(service, stored, patient_id),
        }
        fetched = http.post(f"/cds-services/{service.id}", json=fetched_request)
        sent = http.post(f"/cds-services/{service.id}", json=sent_request)
        assert fetched.status_code == 200, (service.id, fetched.get_json())
        *fetched_outcome, record = outcome(app, fetched)
        *sent_outcome, _ = outcome(app, sent)
        origins = {
            d["key"]: (d["origin"], d.get("problem"))
            for d in record["data"]
            if d["key"] != "context.draftOrders"
        }
        assert all(o == "fetched" for o, _ in origins.values()), (service.id, origins)
        if any(t.resource_type == "DocumentReference" for t in service.templates) and any(
            r["resourceType"] == "DocumentReference" for r in stored
        ):  # the notes came through the real server's search and were read
            assert record["notes"]["documentsRead"] >= 1, (service.id, record["notes"])
        if fetched_outcome != sent_outcome:
            disagreements.append((service.id, fetched_outcome, sent_outcome))
        fired += sum(1 for r in fetched_outcome[2] if r[1] == "fired")
    assert not disagreements, disagreements
    assert fired or patient == "Matt_Mosciski", "no rule fired: the comparison would prove little"
