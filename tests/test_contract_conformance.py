"""Contract tests with the CDS Hooks request fixtures from the FHIR project's test cases."""

from __future__ import annotations

import copy

import pytest
from conftest import load_fixture
from fhir_fake import Reply, searchset

from cds_service.protocol.schemas import CdsResponseSchema

SERVICE_FOR_HOOK = {"order-sign": "medication-order-check", "patient-view": "patient-chart-review"}
GOOD = [
    "conformance/cdshooks-request-order-sign-good.json",
    "conformance/cdshooks-request-patient-view-good.json",
]
BAD = [
    "conformance/cdshooks-request-order-sign-bad-1.json",
    "conformance/cdshooks-request-order-sign-bad-2.json",
    "conformance/cdshooks-request-patient-view-bad.json",
]


def _serve_patient(fake, body):
    """The fixtures name fhirServer http://localhost:8080/fhir; point it at a loopback fake that holds the
    fixture's own Patient and nothing else, so keys the client did not prefetch can be fetched."""
    patient_id = body["context"]["patientId"].split("/")[-1]
    patient = next(
        (
            v.get("resource", v)
            for v in body["prefetch"].values()
            if v and v.get("resource", v).get("resourceType") == "Patient"
        ),
        None,
    )
    fake.default = Reply(200, searchset([]))
    if patient:
        fake.routes[f"Patient/{patient_id}"] = Reply(200, patient)
    body["fhirServer"] = fake.base_url


@pytest.mark.parametrize("name", GOOD)
def test_good_requests_are_accepted_with_valid_cards(make_app, fake_fhir, name):
    body = load_fixture(name)
    _serve_patient(fake_fhir, body)
    client = make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url).test_client()
    response = client.post(f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}", json=body)
    assert response.status_code == 200, response.get_json()
    assert CdsResponseSchema().validate(response.get_json()) == {}
    assert fake_fhir.seen, "keys the client did not prefetch were fetched"


def test_empty_response_fixture_is_our_no_guidance_answer(make_app, fake_fhir):
    body = load_fixture("conformance/cdshooks-request-patient-view-good.json")
    _serve_patient(fake_fhir, body)
    client = make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url).test_client()
    response = client.post("/cds-services/patient-chart-review", json=body)
    assert response.get_json() == load_fixture("conformance/cdshooks-response-empty.json")


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("allowed", [False, True])
def test_bad_requests_never_5xx_and_name_the_field(make_app, fake_fhir, name, allowed):
    body = load_fixture(name)
    overrides = {}
    if allowed:
        _serve_patient(fake_fhir, body)
        overrides["CDS_FHIR_ALLOWED_SERVERS"] = fake_fhir.base_url
    client = make_app(**overrides).test_client()
    response = client.post(f"/cds-services/{SERVICE_FOR_HOOK[body['hook']]}", json=body)
    assert response.status_code < 500
    if response.status_code >= 400:
        outcome = response.get_json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert all(issue.get("expression") for issue in outcome["issue"]), outcome


def test_invalid_draft_order_status_is_named(client):
    body = load_fixture("conformance/cdshooks-request-order-sign-bad-1.json")
    response = client.post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 400
    expressions = [e for issue in response.get_json()["issue"] for e in issue["expression"]]
    assert "context.draftOrders.entry[0].resource.status" in expressions


def test_reference_style_ids_are_normalised(make_app, fake_fhir):
    """patientId "Patient/x" is accepted as "x" (documented normalisation), and fetched as such."""
    body = load_fixture("conformance/cdshooks-request-patient-view-bad.json")
    _serve_patient(fake_fhir, body)
    client = make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url).test_client()
    response = client.post("/cds-services/patient-chart-review", json=body)
    assert response.status_code == 200, response.get_json()
    assert any(s.path.endswith("/Patient/example-rec-04-not-long-acting-opioid") for s in fake_fhir.seen)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.__setitem__("hookInstance", "not-a-uuid"), "hookInstance"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].__setitem__("userId", "Organization/1"), "context.userId"),
        (lambda b: b["context"].__setitem__("patientId", "a b"), "context.patientId"),
        (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
        (
            lambda b: b["context"]["draftOrders"].__setitem__("resourceType", "Patient"),
            "context.draftOrders.resourceType",
        ),
        (
            lambda b: (
                b.pop("fhirServer"),
                b.__setitem__(
                    "fhirAuthorization",
                    {
                        "access_token": "x",
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "scope": "s",
                        "subject": "c",
                    },
                ),
            ),
            "fhirServer",
        ),
        (
            lambda b: b.__setitem__("fhirAuthorization", {"access_token": "x", "token_type": "Bearer"}),
            "fhirAuthorization.expires_in",
        ),
        (lambda b: b.__setitem__("prefetch", {"patient": "Patient/1"}), "prefetch.patient"),
        (lambda b: b.__setitem__("hook", "patient-view"), "hook"),
    ],
)
def test_each_bad_field_is_named(client, mutate, field):
    body = copy.deepcopy(load_fixture("conformance/cdshooks-request-order-sign-good.json"))
    mutate(body)
    response = client.post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 400, response.get_json()
    expressions = [e for issue in response.get_json()["issue"] for e in issue.get("expression", [])]
    assert field in expressions, response.get_json()


def test_unknown_fields_and_extensions_are_tolerated(make_app, fake_fhir):
    body = load_fixture("conformance/cdshooks-request-order-sign-good.json")
    _serve_patient(fake_fhir, body)
    body["extension"] = {"com.example.flag": True}
    body["somethingNew"] = 1
    body["context"]["futureField"] = {"x": 1}
    client = make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url).test_client()
    assert client.post("/cds-services/medication-order-check", json=body).status_code == 200
