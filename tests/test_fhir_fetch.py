"""The fetch path against a real HTTP server on loopback: allowlist, timeouts, auth, paging, outages."""

from __future__ import annotations

import logging
import socket
from datetime import date

import builders
import pytest
from fhir_fake import Reply, searchset

from cds_service.clinical.rule_cases import CaseBuilder
from cds_service.ehr.fhir_client import (
    FetchLimits,
    FhirAuthRejected,
    FhirBadResponse,
    FhirClient,
    FhirServerNotAllowed,
    FhirUnreachable,
    ServerAllowlist,
    new_session,
)

TOKEN = "tok-6f1c2d-do-not-log"


def make_client(base, allowed=(), **limits):
    return FhirClient(
        new_session(),
        base,
        access_token=TOKEN,
        allowlist=ServerAllowlist(list(allowed)),
        limits=FetchLimits(**{"connect_timeout": 1.0, "read_timeout": 1.0, **limits}),
    )


@pytest.mark.parametrize(
    "prefix, url, ok",
    [
        ("https://ehr.example.org/fhir", "https://ehr.example.org/fhir/Patient/1", True),
        ("https://ehr.example.org/fhir", "https://ehr.example.org/fhir", True),
        ("https://ehr.example.org/fhir/", "https://EHR.example.org:443/fhir/Patient?x=1", True),
        ("https://ehr.example.org/fhir", "https://ehr.example.org/fhir-other/Patient/1", False),
        ("https://ehr.example.org/fhir", "https://ehr.example.org.evil.test/fhir/Patient/1", False),
        ("https://ehr.example.org/fhir", "http://ehr.example.org/fhir/Patient/1", False),
        ("https://ehr.example.org/fhir", "https://ehr.example.org:8443/fhir/Patient/1", False),
        ("https://ehr.example.org/fhir", "https://user@evil.test/fhir", False),
        ("https://ehr.example.org/fhir", "file:///etc/passwd", False),
    ],
)
def test_allowlist_matches_scheme_host_port_and_path_segments(prefix, url, ok):
    assert ServerAllowlist([prefix]).permits(url) is ok


def test_not_allowed_server_gets_no_request(fake_fhir):
    client = make_client(fake_fhir.base_url, allowed=["https://elsewhere.example/fhir"])
    with pytest.raises(FhirServerNotAllowed):
        client.get("Patient/p1")
    assert fake_fhir.seen == []


def test_not_allowed_server_through_the_app_is_412_and_silent(client, fake_fhir):
    body = builders.order_sign(
        {"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]},
        prefetch_keys=("patient",),
        fhirServer=fake_fhir.base_url,
        fhirAuthorization={
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "cds",
        },
    )
    response = client.post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 412
    assert "CDS_FHIR_ALLOWED_SERVERS" in response.get_json()["issue"][0]["diagnostics"]
    assert fake_fhir.seen == []


def test_read_timeout(fake_fhir):
    fake_fhir.routes["Patient/p1"] = Reply(200, {"resourceType": "Patient", "id": "p1"}, delay=2.0)
    with pytest.raises(FhirUnreachable, match="timed out"):
        make_client(fake_fhir.base_url, [fake_fhir.base_url], read_timeout=0.3).get("Patient/p1")


@pytest.mark.parametrize("status", [401, 403])
def test_auth_rejected(fake_fhir, status):
    fake_fhir.routes["Patient/p1"] = Reply(status, {"resourceType": "OperationOutcome", "issue": []})
    with pytest.raises(FhirAuthRejected):
        make_client(fake_fhir.base_url, [fake_fhir.base_url]).get("Patient/p1")


def test_server_down():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/fhir"
    with pytest.raises(FhirUnreachable, match="could not connect"):
        make_client(base, [base]).get("Patient/p1")


def test_server_error_and_garbage(fake_fhir):
    fake_fhir.routes["Patient/p1"] = Reply(500, {"resourceType": "OperationOutcome", "issue": []})
    fake_fhir.routes["Patient/p2"] = Reply(200, b"<html>login</html>")
    fake_fhir.routes["Patient/p3"] = Reply(200, {"no": "resourceType"})
    client = make_client(fake_fhir.base_url, [fake_fhir.base_url])
    for rid in ("p1", "p2", "p3"):
        with pytest.raises(FhirBadResponse):
            client.get(f"Patient/{rid}")


def test_paging_follows_next_links(fake_fhir):
    base = fake_fhir.base_url
    fake_fhir.routes["Observation?subject=Patient/p1"] = Reply(
        200, searchset([{"resourceType": "Observation", "id": "o1"}], next_url=f"{base}/Observation?page=2")
    )
    fake_fhir.routes["Observation?page=2"] = Reply(
        200, searchset([{"resourceType": "Observation", "id": "o2"}], next_url=f"{base}/Observation?page=3")
    )
    fake_fhir.routes["Observation?page=3"] = Reply(
        200, searchset([{"resourceType": "Observation", "id": "o3"}])
    )
    resources, pages = make_client(base, [base]).get("Observation?subject=Patient/p1")
    assert [r["id"] for r in resources] == ["o1", "o2", "o3"] and pages == 3


def test_paging_is_bounded(fake_fhir):
    base = fake_fhir.base_url
    fake_fhir.routes["Observation?page=1"] = lambda rel: Reply(
        200, searchset([], next_url=f"{base}/Observation?page=1")
    )
    with pytest.raises(FhirBadResponse, match="pages"):
        make_client(base, [base], max_pages=3).get("Observation?page=1")
    assert len(fake_fhir.seen) == 3


def test_next_link_to_another_host_is_refused(fake_fhir):
    base = fake_fhir.base_url
    fake_fhir.routes["Observation?x=1"] = Reply(
        200, searchset([], next_url="http://attacker.invalid/steal?page=2")
    )
    with pytest.raises(FhirServerNotAllowed):
        make_client(base, [base]).get("Observation?x=1")


def test_redirects_are_not_followed(fake_fhir):
    base = fake_fhir.base_url
    fake_fhir.routes["Patient/p1"] = Reply(302, {}, headers={"Location": "http://attacker.invalid/x"})
    with pytest.raises(FhirBadResponse):
        make_client(base, [base]).get("Patient/p1")


def test_oversized_response_is_refused(fake_fhir):
    fake_fhir.routes["Patient/p1"] = Reply(
        200, {"resourceType": "Patient", "id": "p1", "text": {"div": "x" * 5000}}
    )
    with pytest.raises(FhirBadResponse, match="larger"):
        make_client(fake_fhir.base_url, [fake_fhir.base_url], max_response_bytes=1000).get("Patient/p1")


def test_fetch_through_the_app_then_token_never_logged_or_stored(make_app, fake_fhir, caplog):
    base = fake_fhir.base_url
    body = builders.order_sign(
        {"medications": ["Ibuprofen 200 MG Oral Tablet"], "draftOrders": ["Ibuprofen 600 MG Oral Tablet"]},
        prefetch_keys=("patient",),
        fhirServer=base,
        fhirAuthorization={
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "cds",
        },
    )
    resources, _ = CaseBuilder(date.today()).build({"medications": ["Ibuprofen 200 MG Oral Tablet"]})
    active = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    fake_fhir.routes["MedicationRequest?subject=Patient/case-patient&status=active"] = Reply(
        200, searchset(active)
    )
    fake_fhir.default = Reply(200, searchset([]))
    app = make_app(CDS_FHIR_ALLOWED_SERVERS=base)
    caplog.set_level(logging.DEBUG)
    response = app.test_client().post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["cards"]) == 1
    assert all(s.headers.get("Authorization") == f"Bearer {TOKEN}" for s in fake_fhir.seen)
    assert TOKEN not in caplog.text
    rt = app.extensions["cds_runtime"]
    with rt.storage.decision_log.engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM decisions"))
    assert TOKEN not in dump and "case-patient" in dump
