"""`cds-service fhir load`: FHIR content into a FHIR server nobody on this project wrote (Medplum's in-memory
FHIR router, started as in test_medplum.py: needs Node and `npm ci --prefix tests/medplum`), and what it says
when a server refuses (tests/fhir_fake.py)."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import date, datetime, timedelta

import pytest
import requests
from click.testing import CliRunner
from fhir_fake import Reply
from test_medplum import SAMPLES, Medplum

from cds_service.cli import main
from cds_service.sandbox.loading import LoadError, as_transaction, created_anew, shift_to_yesterday
from cds_service.sandbox.samples import sample_bundles
from cds_service.settings import Settings

FILES = sorted(SAMPLES.glob("Max_Dicki_*.json")) + sorted(SAMPLES.glob("Roberto_Graham_*.json"))
TOKEN = "s3cret-loader-token"


def load(*args: str):
    return CliRunner().invoke(main, ["fhir", "load", *args], catch_exceptions=False)


def file_resources(path) -> list[dict]:
    return [e["resource"] for e in json.loads(path.read_text())["entry"]]


# --- what is sent ---------------------------------------------------------------------------------------


def test_a_synthea_transaction_is_sent_as_puts_under_the_files_ids():
    content = json.loads(FILES[0].read_text())
    original = copy.deepcopy(content)
    transaction = as_transaction(content)
    assert transaction["type"] == "transaction"
    assert len(transaction["entry"]) == len(content["entry"])
    for sent, source in zip(transaction["entry"], content["entry"], strict=True):
        resource = source["resource"]
        assert sent["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        assert sent["fullUrl"] == source["fullUrl"] == f"urn:uuid:{resource['id']}"  # references resolve
    assert shift_to_yesterday(transaction, date.today()) > 0  # Synthea's charts end years ago
    assert content == original  # the file's content is neither rewritten nor shifted


def test_each_kind_of_entry_gets_the_request_that_keeps_loading_idempotent():
    uuid = "6f1c7a52-0d7e-4b8f-9a43-1d2c3b4a5e6f"
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "http://other.example/fhir/Patient/p1",
                "resource": {"resourceType": "Patient", "id": "p1"},
            },
            {"fullUrl": f"urn:uuid:{uuid}", "resource": {"resourceType": "Encounter", "status": "finished"}},
            {"resource": {"resourceType": "Observation", "status": "final"}},
            {
                "fullUrl": "urn:uuid:0b9d2c1e-3f4a-4b5c-8d6e-7f8091a2b3c4",
                "resource": {"resourceType": "Practitioner", "id": "pr1"},
                "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=npi|123"},
            },
            {"request": {"method": "DELETE", "url": "Patient/gone"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
        ],
    }
    entries = as_transaction(collection)["entry"]
    assert [(e.get("fullUrl"), e["request"]) for e in entries] == [
        (None, {"method": "PUT", "url": "Patient/p1"}),  # another server's URL is no placeholder here
        (f"urn:uuid:{uuid}", {"method": "PUT", "url": f"Encounter/{uuid}"}),
        (None, {"method": "POST", "url": "Observation"}),
        (
            "urn:uuid:0b9d2c1e-3f4a-4b5c-8d6e-7f8091a2b3c4",
            {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=npi|123"},
        ),
    ]
    assert entries[1]["resource"]["id"] == uuid
    assert (
        created_anew(as_transaction(collection)) == 1
    )  # the Observation: said, since a reload duplicates it

    single = as_transaction({"resourceType": "Patient", "id": "solo"})
    assert [e["request"] for e in single["entry"]] == [{"method": "PUT", "url": "Patient/solo"}]
    document = as_transaction({"resourceType": "Bundle", "id": "doc1", "type": "document", "entry": []})
    assert [e["request"] for e in document["entry"]] == [{"method": "PUT", "url": "Bundle/doc1"}]
    for bad in ({"id": "x"}, {"resourceType": "Bundle", "type": "collection", "entry": []}):
        with pytest.raises(LoadError):
            as_transaction(bad)


def test_shifting_moves_the_newest_clinical_date_to_yesterday():
    transaction = as_transaction(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "p", "birthDate": "1950-03-01"}},
                {
                    "resource": {
                        "resourceType": "Encounter",
                        "id": "e",
                        "period": {"start": "2020-01-10T09:00:00+01:00", "end": "2020-01-10T09:30:00+01:00"},
                    }
                },
                {"resource": {"resourceType": "Condition", "id": "c", "onsetDateTime": "2019-06-01"}},
                # billing a year after the visit is no clinical date: it must not decide the shift
                {
                    "resource": {
                        "resourceType": "ExplanationOfBenefit",
                        "id": "b",
                        "billablePeriod": {"start": "2020-01-10", "end": "2021-01-10"},
                    }
                },
            ],
        }
    )
    days = shift_to_yesterday(transaction, date(2024, 5, 1))
    assert days == (date(2024, 4, 30) - date(2020, 1, 10)).days
    by_type = {e["resource"]["resourceType"]: e["resource"] for e in transaction["entry"]}
    assert by_type["Encounter"]["period"]["start"] == "2024-04-30T09:00:00+01:00"
    assert by_type["Condition"]["onsetDateTime"] == (date(2019, 6, 1) + timedelta(days=days)).isoformat()


# --- a real FHIR server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def medplum(tmp_path_factory):
    server = Medplum(tmp_path_factory.mktemp("medplum-load"))
    yield server
    server.stop()


def search(base: str, query: str) -> dict:
    answer = requests.get(f"{base}/{query}", timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    return answer.json()


def type_totals(base: str, types) -> dict[str, int]:
    return {t: search(base, f"{t}?_summary=count")["total"] for t in sorted(types)}


def test_synthea_files_load_into_medplum_and_loading_twice_changes_nothing(medplum):
    first = load(*map(str, FILES), "--server", medplum.base_url)
    assert first.exit_code == 0, first.output + first.stderr
    types = {r["resourceType"] for f in FILES for r in file_resources(f)}
    after_first = type_totals(medplum.base_url, types)
    for path in FILES:
        resources = file_resources(path)
        (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
        assert (
            f"{path}: {len(resources)} resources -> 200 OK, {len(resources)}/{len(resources)}" in first.output
        )

        stored = requests.get(f"{medplum.base_url}/Patient/{patient['id']}", timeout=30).json()
        assert stored["name"] == patient["name"]
        orders = search(medplum.base_url, f"MedicationRequest?subject=Patient/{patient['id']}&_count=500")
        in_file = [r for r in resources if r["resourceType"] == "MedicationRequest"]
        assert orders["total"] == len(in_file) > 0
        # urn:uuid: references were resolved by the server within the transaction
        assert {e["resource"]["subject"]["reference"] for e in orders["entry"]} == {
            f"Patient/{patient['id']}"
        }
        encounters = {r["id"] for r in resources if r["resourceType"] == "Encounter"}
        assert {e["resource"]["encounter"]["reference"].split("/")[1] for e in orders["entry"]} <= encounters
    # every resource stored, under the file's ids (other tests may have loaded some of them already)
    in_files = Counter(t for t, _ in {(r["resourceType"], r["id"]) for f in FILES for r in file_resources(f)})
    assert all(after_first[t] >= n for t, n in in_files.items()), (after_first, in_files)

    second = load(*map(str, FILES), "--server", medplum.base_url)
    assert second.exit_code == 0, second.output + second.stderr
    assert type_totals(medplum.base_url, types) == after_first
    sent = sum(len(file_resources(f)) for f in FILES)
    assert f"total: 2 files, {sent} resources, {sent} stored, 0 failed" in second.output


def test_without_files_the_sandboxs_sample_patients_load_as_the_sandbox_serves_them(medplum):
    result = load("--server", medplum.base_url)
    assert result.exit_code == 0, result.output + result.stderr
    bundles = sample_bundles(Settings.load().fhir_dir, datetime.now().astimezone().date())
    assert len(bundles) >= 13
    for name, bundle in bundles:
        resources = [e["resource"] for e in bundle["entry"]]
        assert f"{name}: {len(resources)} resources -> 200 OK" in result.output
        (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
        orders = search(medplum.base_url, f"MedicationRequest?subject=Patient/{patient['id']}&_count=500")
        expected = sorted(r.get("authoredOn") for r in resources if r["resourceType"] == "MedicationRequest")
        assert sorted(e["resource"].get("authoredOn") for e in orders.get("entry", [])) == expected


# --- a server that refuses ------------------------------------------------------------------------------

OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "Bundle.entry[0]: unknown element 'foo'"}
    ],
}


@pytest.fixture
def one_file(tmp_path):
    path = tmp_path / "one-patient.json"
    path.write_text(json.dumps({"resourceType": "Patient", "id": "p1"}))
    return path


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (Reply(400, OUTCOME), "400 Bad Request: Bundle.entry[0]: unknown element 'foo'"),
        (
            Reply(500, b"<html>Internal Server Error</html>"),
            "500 Internal Server Error: <html>Internal Server",
        ),
        (
            Reply(
                200,
                {
                    "resourceType": "Bundle",
                    "type": "transaction-response",
                    "entry": [{"response": {"status": "422 Unprocessable Entity", "outcome": OUTCOME}}],
                },
            ),
            "entry[0] PUT Patient/p1: 422 Unprocessable Entity: Bundle.entry[0]: unknown element 'foo'",
        ),
        (
            Reply(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": []}),
            "the answer has 0 entries for 1 sent",
        ),
    ],
)
def test_a_refused_file_fails_the_command_naming_the_file_and_the_servers_diagnostics(
    fake_fhir, one_file, tmp_path, reply, said
):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"resourceType": "Patient", "id": "p2"}))

    def answer(path: str) -> Reply:  # the request just recorded is the one being answered
        return reply if b'"p1"' in fake_fhir.seen[-1].body else ok_reply(1)

    fake_fhir.default = answer
    result = load(str(one_file), str(good), "--server", fake_fhir.base_url)
    assert result.exit_code == 1
    assert f"{one_file}: {said}" in result.stderr
    assert f"error: 1 of 2 files failed: {one_file}" in result.stderr
    assert f"{good}: 1 resource -> 200 OK, 1/1 entries succeeded: ok" in result.output


def ok_reply(n: int) -> Reply:
    entries = [{"response": {"status": "201 Created"}} for _ in range(n)]
    return Reply(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


def test_the_token_is_sent_as_a_bearer_header_and_never_printed(fake_fhir, one_file):
    fake_fhir.default = ok_reply(1)
    result = load(str(one_file), "--server", fake_fhir.base_url, "--token", TOKEN)
    assert result.exit_code == 0, result.output + result.stderr
    (request,) = fake_fhir.seen
    assert request.path == "/fhir"  # POST [base]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert json.loads(request.body)["type"] == "transaction"

    fake_fhir.default = Reply(401, {"resourceType": "OperationOutcome", "issue": [{"code": "login"}]})
    refused = load(str(one_file), "--server", fake_fhir.base_url, "--token", TOKEN)
    assert refused.exit_code == 1 and "401" in refused.stderr
    for run in (result, refused):
        assert TOKEN not in run.output + run.stderr

    fake_fhir.default = ok_reply(1)
    assert load(str(one_file), "--server", fake_fhir.base_url).exit_code == 0
    assert "Authorization" not in fake_fhir.seen[-1].headers


def test_a_server_that_does_not_answer_in_time_fails_the_file(fake_fhir, one_file):
    fake_fhir.default = Reply(200, {}, delay=3)
    result = load(str(one_file), "--server", fake_fhir.base_url, "--timeout", "1")
    assert result.exit_code == 1
    assert f"{one_file}: no answer within 1 s" in result.stderr
