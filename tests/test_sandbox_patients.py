"""The sandbox's hand-made patients (fhir/samples/sandbox/patients.yaml): every rule pack has a patient
that triggers it, every demonstration fires exactly the rules it names when run through the service, the
charts are valid FHIR R4, and a badly written file is refused naming the field."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import yaml
from builders import searchset

from cds_service.audit.record import CHART_SUMMARY_RULE
from cds_service.clinical.rule_cases import CaseBuilder
from cds_service.ehr.validation import ResourceValidator
from cds_service.errors import ContentError
from cds_service.sandbox.patients import SANDBOX_USER, demonstrations, load_patients

ROOT = Path(__file__).resolve().parents[1]
PATIENTS_FILE = ROOT / "fhir" / "samples" / "sandbox" / "patients.yaml"
TODAY = date.today()
PATIENTS = load_patients(PATIENTS_FILE, TODAY)
DEMONSTRATIONS = demonstrations(PATIENTS)
RULE_EXTENSION = "org.cds-service.rule"
NOTE_EVIDENCE_EXTENSION = "org.cds-service.note-evidence"


# --- prefetch as an EHR would send it ------------------------------------------------------------
def _codings(value) -> list[dict]:
    concepts = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    return [c for concept in concepts for c in (concept.get("coding") or [])]


def _token_matches(resource: dict, name: str, wanted: str) -> bool:
    """The token search parameters the services' templates use: status, category and code."""
    options = wanted.split(",")
    if name == "status":
        return resource.get("status") in options
    for coding in _codings(resource.get(name)):
        for option in options:
            system, sep, code = option.rpartition("|")
            if coding.get("code") == code and (not sep or coding.get("system") == system):
                return True
    return False


def _search(resources: list[dict], query: str) -> dict:
    """A searchset Bundle for `Type?params`: the patient's resources of that type, filtered on the token
    parameters whose value the template fixes. Templated values (the subject, the date windows) are not
    applied: every resource is this patient's, and the charts keep their data inside the windows."""
    rtype, _, params = query.partition("?")
    found = [r for r in resources if r["resourceType"] == rtype]
    includes = []
    for name, value in parse_qsl(params):
        if name in ("status", "category", "code") and "{{" not in value:
            found = [r for r in found if _token_matches(r, name, value)]
        elif name == "_include" and value == f"{rtype}:medication":  # the Medications they refer to
            refs = {(r.get("medicationReference") or {}).get("reference") for r in found}
            includes = [r for r in resources if f"{r['resourceType']}/{r['id']}" in refs]
    return searchset(found + includes)


def prefetch_for(templates: dict[str, str], resources: list[dict]) -> dict:
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    out = {}
    for key, template in templates.items():
        if "?" in template:
            out[key] = _search(resources, template)
        else:
            assert template.startswith("Patient/"), f"read template {template!r} is not the patient"
            out[key] = patient
    return out


def _services(app) -> dict[str, dict]:
    return {s["id"]: s for s in app.test_client().get("/cds-services").get_json()["services"]}


def _call(app, service: dict, patient, demo) -> tuple[list[dict], dict]:
    body = {
        "hook": demo.hook,
        "hookInstance": str(uuid.uuid4()),
        "context": demo.context(),
        "prefetch": prefetch_for(service.get("prefetch") or {}, patient.resources),
    }
    response = app.test_client().post(f"/cds-services/{demo.service}", json=body)
    assert response.status_code == 200, response.get_json()
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    return response.get_json()["cards"], record


# --- the tests -----------------------------------------------------------------------------------
def test_every_rule_pack_has_a_patient_that_triggers_it(content):
    active_packs = {r.pack for r in content.rulebook.rules if r.status == "active"}
    expected = {rule_id for _, demo in DEMONSTRATIONS for rule_id in demo.expect}
    pack_of = {r.id: r.pack for r in content.rulebook.rules}
    assert expected <= set(pack_of), f"unknown rule ids: {sorted(expected - set(pack_of))}"
    assert active_packs - {pack_of[r] for r in expected} == set()


def test_every_rule_that_reads_notes_is_shown_firing_on_a_note(content):
    note_rules = {r.id for r in content.rulebook.rules if r.note_evidence and r.status == "active"}
    shown = {rule_id for _, demo in DEMONSTRATIONS if demo.note_evidence for rule_id in demo.expect}
    assert note_rules - shown == set()
    assert shown <= note_rules  # a demonstration cannot claim note evidence for a rule that ignores notes


def test_there_are_patients_with_nothing_to_flag():
    quiet = [p for p in PATIENTS if all(not d.expect for d in p.demonstrations)]
    assert len(quiet) >= 2
    assert all("nothing-to-flag" in p.tags for p in quiet)


@pytest.mark.parametrize(("patient", "demo"), DEMONSTRATIONS, ids=[d.name for _, d in DEMONSTRATIONS])
def test_demonstration_fires_exactly_what_it_expects(make_app, patient, demo):
    app = make_app()
    service = _services(app).get(demo.service)
    assert service is not None, f"no service {demo.service!r} in hooks/"
    assert service["hook"] == demo.hook
    cards, record = _call(app, service, patient, demo)
    active = [r for r in record["rules"] if r["status"] == "active"]
    # Every rule was evaluated on the data: a quiet answer must not come from a prefetch key left out.
    assert {r["outcome"] for r in active} <= {"fired", "not-fired"}, active
    fired = {r["id"] for r in active if r["outcome"] == "fired"}
    assert fired == set(demo.expect), [(r["id"], r["outcome"], r.get("reason")) for r in record["rules"]]
    carded = [c for c in cards if c["extension"][RULE_EXTENSION]["id"] != CHART_SUMMARY_RULE]
    # Nothing else speaks either: no data-quality notice (the charts are clean) and no unexpected card.
    assert {c["extension"][RULE_EXTENSION]["id"] for c in carded} == set(demo.expect)
    if demo.note_evidence:
        assert all(NOTE_EVIDENCE_EXTENSION in c["extension"] for c in carded), [c["summary"] for c in carded]
    assert record["user"] == SANDBOX_USER and record["patient"] == f"Patient/{patient.id}"


def test_charts_and_draft_orders_are_valid_fhir_r4():
    validator = ResourceValidator()
    for patient in PATIENTS:
        drafts = [r for d in patient.demonstrations for r in d.draft_orders]
        for i, resource in enumerate(patient.resources + drafts):
            checked = validator.examine(resource, f"{patient.id}[{i}]")
            assert checked.issues == [] and checked.normalised == [], (resource, checked.issues)


def test_resource_ids_are_unique_and_carry_the_patient_id():
    seen = set()
    for patient in PATIENTS:
        assert (patient.patient["resourceType"], patient.patient["id"]) == ("Patient", patient.id)
        assert patient.patient["name"][0]["family"] == "Sandbox"
        drafts = [r for d in patient.demonstrations for r in d.draft_orders]
        for resource in patient.resources + drafts:
            key = (resource["resourceType"], resource["id"])
            assert key not in seen
            seen.add(key)
            assert resource["id"] == patient.id or resource["id"].startswith(f"{patient.id}-")
            assert len(resource["id"]) <= 64
            ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
            # a Medication (named by medicationReference) is about a drug, not a patient
            assert resource["resourceType"] in ("Patient", "Medication") or ref == f"Patient/{patient.id}"


def test_chart_data_lie_inside_the_prefetch_date_windows():
    """`_search` does not apply the templates' date windows (400 days at the shortest): nothing here is
    older, except the problem list, which no template limits by date."""
    oldest = TODAY - timedelta(days=365)
    for patient in PATIENTS:
        for resource in patient.resources:
            for key in ("authoredOn", "effectiveDateTime", "date", "performedDateTime"):
                if key in resource:
                    assert date.fromisoformat(resource[key][:10]) >= oldest, (resource["id"], key)
            start = (resource.get("period") or {}).get("start")
            assert start is None or date.fromisoformat(start[:10]) >= oldest, resource["id"]


def test_charts_are_dated_from_the_day_they_are_loaded():
    earlier = TODAY - timedelta(days=100)
    then = {p.id: p for p in load_patients(PATIENTS_FILE, earlier)}
    for patient in PATIENTS:
        for now_r, then_r in zip(patient.resources, then[patient.id].resources, strict=True):
            for key in ("authoredOn", "effectiveDateTime", "recordedDate", "date"):
                if key in now_r:
                    shift = date.fromisoformat(now_r[key][:10]) - date.fromisoformat(then_r[key][:10])
                    assert shift == timedelta(days=100), (now_r["id"], key)


def test_try_orders_list_each_draft_order_once_with_its_code():
    anticoagulated = next(p for p in PATIENTS if p.id == "sandbox-anticoagulated")
    displays = [o["display"] for o in anticoagulated.try_orders]
    assert len(displays) == len(set(displays)) == len(anticoagulated.demonstrations)
    clopidogrel = next(o for o in anticoagulated.try_orders if o["display"].startswith("Clopidogrel"))
    assert clopidogrel["code"] == "309362"
    opioid = next(p for p in PATIENTS if p.id == "sandbox-opioid-naive-ankle-sprain").try_orders
    assert {(o["supplyDays"], o["category"]) for o in opioid} == {(5, "community"), (10, "community")}


def test_case_builder_defaults_are_unchanged_for_rule_cases():
    resources, drafts = CaseBuilder(TODAY).build(
        {"medications": ["Warfarin Sodium 5 MG Oral Tablet"], "draftOrders": ["Ibuprofen 400 MG Oral Tablet"]}
    )
    assert resources[0]["id"] == "case-patient" and "name" not in resources[0]
    assert resources[1]["id"] == "med-1" and resources[1]["requester"] == {
        "reference": "Practitioner/case-user"
    }
    assert drafts[0]["subject"] == {"reference": "Patient/case-patient"}


def _minimal(**changes) -> dict:
    patient = {
        "id": "p-1",
        "name": {"given": "A", "family": "B"},
        "gender": "female",
        "description": "d",
        "demonstrations": [{"service": "s", "hook": "patient-view", "expect": []}],
    }
    return {**patient, **changes}


BAD_FILES = [
    ({"patients": []}, "patients", "should be non-empty"),
    (
        {"patients": [_minimal(demonstrations=[{"service": "s", "hook": "order-sign", "expect": []}])]},
        "patients[0].demonstrations[0].draftOrders",
        "needs draftOrders",
    ),
    (
        {"patients": [_minimal(medications=[{"text": "x", "supplydays": 3}])]},
        "patients[0].medications[0]",
        "'supplydays' was unexpected",
    ),
    (
        {"patients": [_minimal(observations=[{"text": "no code", "value": 3}])]},
        "patients[0].observations[0]",
        "'code' is a required property",
    ),
    ({"patients": [_minimal(age=3, birthDate="2020-01-01")]}, "patients[0]", "not both"),
    (
        {"patients": [_minimal(resources=[{"resourceType": "Basic", "id": "other-1"}])]},
        "patients[0].resources[0].id",
        "must start with 'p-1'-",
    ),
    ({"patients": [_minimal(), _minimal(gender="male")]}, "patients[1].id", "defined twice"),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD_FILES)
def test_a_badly_written_file_is_refused_naming_the_field(tmp_path, data, field, message):
    path = tmp_path / "fhir" / "samples" / "sandbox" / "patients.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ContentError) as excinfo:
        load_patients(path, TODAY)
    assert excinfo.value.path == "fhir/samples/sandbox/patients.yaml"
    assert excinfo.value.field_path == field and message in excinfo.value.message
