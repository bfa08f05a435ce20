"""One error shape on every error path: an OperationOutcome naming the problem, never a 5xx for input."""

from __future__ import annotations

import json

import builders
import pytest
from jwt_client import client_keys

SERVICE = "/cds-services/medication-order-check"


def assert_outcome(response, status):
    assert response.status_code == status, response.data[:500]
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(
        i["severity"] in ("error", "fatal") and i["code"] and i["diagnostics"] for i in body["issue"]
    )
    return body


def test_400_invalid_json(client):
    assert_outcome(client.post(SERVICE, data="{not json", content_type="application/json"), 400)


def test_400_body_not_an_object(client):
    body = assert_outcome(client.post(SERVICE, json=[1, 2]), 400)
    assert body["issue"][0]["expression"] == ["body"]


def test_401_when_clients_are_configured(make_app, tmp_path):
    client = make_app(CDS_CLIENTS=client_keys(tmp_path)[1]).test_client()
    response = client.post(SERVICE, json={})
    assert_outcome(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/cds-services/nope", "/cds-services/nope/feedback", "/nothing-here"])
def test_404(client, path):
    assert_outcome(client.post(path, json={}), 404)


def test_405_names_allowed_methods(client):
    response = client.delete("/cds-services")
    assert_outcome(response, 405)
    assert "GET" in response.headers["Allow"]


def test_412(client):
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]}, prefetch_keys=())
    assert_outcome(client.post(SERVICE, json=body), 412)


def test_413_request_too_large(make_app):
    client = make_app(CDS_MAX_REQUEST_BYTES="2000").test_client()
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"] * 20})
    assert_outcome(client.post(SERVICE, json=body), 413)


def test_415_not_json(client):
    assert_outcome(
        client.post(SERVICE, data="hook=order-sign", content_type="application/x-www-form-urlencoded"), 415
    )


@pytest.mark.parametrize(
    ("data", "content_type", "status", "names"),
    [
        ("{not json", "application/json", 400, "not valid JSON"),
        (b'{"hook": "order-sign", "x": "\xff"}', "application/json", 400, "not UTF-8"),
        ("[" * 100 + "]" * 100, "application/json", 400, "nested more than"),
        ("hook=order-sign", "application/x-www-form-urlencoded", 415, "Content-Type"),
        ("x" * 3000, "application/json", 413, "CDS_MAX_REQUEST_BYTES"),
    ],
)
def test_a_body_that_cannot_be_taken_is_refused_and_recorded(make_app, data, content_type, status, names):
    """Every call to an existing service leaves a decision record, those refused before their body was
    read as JSON too: the auditor sees who sent what kind of refusal, and when."""
    app = make_app(CDS_MAX_REQUEST_BYTES="2000")
    response = app.test_client().post(SERVICE, data=data, content_type=content_type)
    body = assert_outcome(response, status)
    assert names in body["issue"][0]["diagnostics"]
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    assert record["service"] == {"id": "medication-order-check"}
    assert record["response"] == {"status": status}
    assert record["error"] == body
    assert record["hook"] == "" and "patient" not in record and record["data"] == []


def test_a_body_sent_to_no_service_is_a_404_and_not_read(client):
    assert_outcome(client.post("/cds-services/nope", data="{not json", content_type="application/json"), 404)


def test_unreadable_prefetch_resource_is_set_aside_and_said_not_a_400(app):
    """Lenient with the data: a Patient whose birthDate is no date cannot be read for age; it is set
    aside, the rules reading Patient data are unevaluable, the clinician gets an info card, and the
    decision record names the resource and the field."""
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]})
    body["prefetch"]["patient"]["birthDate"] = "not-a-date"
    response = app.test_client().post(SERVICE, json=body)
    assert response.status_code == 200, response.data[:500]
    cards = response.get_json()["cards"]
    notice = [c for c in cards if c["extension"]["org.cds-service.rule"]["id"] == "data-quality"]
    assert len(notice) == 1 and notice[0]["indicator"] == "info"
    assert "prefetch.patient" in notice[0]["detail"]
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    issues = record["dataQuality"]["issues"]
    assert issues[0]["action"] == "set-aside" and issues[0]["location"] == "prefetch.patient"
    assert "prefetch.patient.birthDate" in issues[0]["fields"]
    assert record["dataQuality"]["card"] == notice[0]["uuid"]
    outcomes = {r["outcome"] for r in record["rules"]}
    assert "unevaluable" in outcomes


def test_resource_of_another_patient_is_set_aside_and_the_rest_still_checked(app):
    body = builders.order_sign(
        {
            "medications": ["Warfarin Sodium 5 MG Oral Tablet", "Ibuprofen 200 MG Oral Tablet"],
            "draftOrders": ["Ibuprofen 200 MG Oral Tablet"],
        }
    )
    body["prefetch"]["medications"]["entry"][1]["resource"]["subject"]["reference"] = "Patient/someone-else"
    response = app.test_client().post(SERVICE, json=body)
    assert response.status_code == 200, response.data[:500]
    cards = response.get_json()["cards"]
    rules = [c["extension"]["org.cds-service.rule"]["id"] for c in cards]
    assert "ddi-warfarin-nsaid" in rules  # warfarin was readable and is this patient's
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    (issue,) = record["dataQuality"]["issues"]
    assert issue["location"] == "prefetch.medications.entry[1].resource"
    assert issue["fields"] == ["prefetch.medications.entry[1].resource.subject.reference"]
    assert "someone-else" not in json.dumps(record["dataQuality"])  # another patient's id is not copied


@pytest.mark.parametrize("subject", ["Patient/someone-else", "Group/1", "Practitioner/x"])
def test_draft_order_for_someone_else_is_400(client, subject):
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]})
    body["context"]["draftOrders"]["entry"][0]["resource"]["subject"]["reference"] = subject
    out = assert_outcome(client.post(SERVICE, json=body), 400)
    assert out["issue"][0]["expression"] == ["context.draftOrders.entry[0].resource.subject.reference"]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        0,
        "x",
        [],
        {},
        {"hook": None},
        {"hook": 5},
        {"hook": "order-sign", "context": []},
        {"hook": "order-sign", "hookInstance": "3f1d6a52-0d38-4f38-9b43-8e2b0c0c8d11", "context": {}},
        {
            "hook": "order-sign",
            "hookInstance": "3f1d6a52-0d38-4f38-9b43-8e2b0c0c8d11",
            "context": {
                "userId": "Practitioner/1",
                "patientId": "1",
                "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": 5}, 7]},
            },
        },
        {
            "hook": "order-sign",
            "hookInstance": "3f1d6a52-0d38-4f38-9b43-8e2b0c0c8d11",
            "context": {
                "userId": "Practitioner/1",
                "patientId": "1",
                "draftOrders": {
                    "resourceType": "Bundle",
                    "entry": [{"resource": {"resourceType": "NoSuchType"}}],
                },
            },
        },
        {
            "hook": "order-sign",
            "hookInstance": "3f1d6a52-0d38-4f38-9b43-8e2b0c0c8d11",
            "prefetch": {"a": [1]},
            "context": {
                "userId": "Practitioner/1",
                "patientId": "1",
                "draftOrders": {"resourceType": "Bundle"},
            },
        },
    ],
)
def test_malformed_input_is_4xx_never_5xx(client, payload):
    response = client.post(SERVICE, data=json.dumps(payload), content_type="application/json")
    assert 400 <= response.status_code < 500
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_feedback_errors_have_the_same_shape(client):
    assert_outcome(client.post("/cds-services/medication-order-check/feedback", json={"feedback": [{}]}), 400)


def test_a_4xx_is_logged_with_its_reason_and_no_patient_data(client, caplog):
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]})
    body["context"]["patientId"] = "Pat-Secret-77"
    body["prefetch"]["patient"]["id"] = "Pat-Secret-77"
    body["context"]["draftOrders"]["entry"][0]["resource"]["status"] = "bogus"
    body["fhirAuthorization"] = {
        "access_token": "tok-SECRET",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    body["fhirServer"] = "https://ehr.example/fhir"
    with caplog.at_level("INFO", logger="cds_service"):
        response = client.post(SERVICE, json=body)
    assert response.status_code == 400
    lines = [r.getMessage() for r in caplog.records if "-> 400" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "context.draftOrders.entry[0].resource.status" in lines[0]
    assert response.headers["X-Decision-Id"] in lines[0]
    everything = caplog.text
    assert "Pat-Secret-77" not in everything and "tok-SECRET" not in everything
