"""The sandbox's backend and its trust set-up: what the mock-EHR page reads, the JWTs it signs, and a
whole round trip against `cds-service serve --sandbox` (JWT checked through the sandbox's JWKS URL, data
fetched from the sandbox FHIR endpoint, decision read through the auditor API)."""

from __future__ import annotations

import json
import os
import stat
import uuid
from datetime import datetime
from pathlib import Path

import jwt
import pytest
import requests
from test_serve import free_port, start_serve, wait_ready

from cds_service.sandbox.trust import prepare

ROOT_FHIR = Path(__file__).resolve().parents[1] / "fhir"

MAX_DICKI = "8008b382-91cc-468f-95e5-7d6982b7ebb9"  # warfarin active
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def TODAY():
    return datetime.now().astimezone().date()


IBUPROFEN = {"system": RXNORM, "code": "197806", "display": "Ibuprofen 600 MG Oral Tablet"}


# ---- trust files ---------------------------------------------------------------------------------


def test_prepare_keeps_the_key_and_the_operators_own_clients_and_auditors(tmp_path):
    own_clients = tmp_path / "clients.json"
    own_clients.write_text(
        json.dumps(
            {"clients": [{"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks"}]}
        )
    )
    own_tokens = tmp_path / "auditors"
    own_tokens.write_text("alice:" + "a" * 64 + "\n")
    first = prepare(
        tmp_path / "data", "http://127.0.0.1:8080", clients=str(own_clients), audit_tokens=str(own_tokens)
    )
    key = (first.directory / "client-key.jwk.json").read_text()
    second = prepare(
        tmp_path / "data", "http://127.0.0.1:8080", clients=str(own_clients), audit_tokens=str(own_tokens)
    )
    assert (second.directory / "client-key.jwk.json").read_text() == key  # the same client after a restart
    clients = json.loads(second.clients_file.read_text())["clients"]
    assert [c["iss"] for c in clients] == ["https://ehr.example.org", "http://127.0.0.1:8080/sandbox"]
    assert clients[1] == {
        "iss": "http://127.0.0.1:8080/sandbox",
        "jwks_url": "http://127.0.0.1:8080/sandbox/.well-known/jwks.json",
    }
    lines = second.audit_tokens_file.read_text().splitlines()
    assert lines[0].startswith("alice:") and sum(ln.startswith("sandbox:") for ln in lines) == 1
    for name in ("client-key.jwk.json", "auditor-token", "auditor-tokens", "cds-clients.json"):
        assert stat.S_IMODE(os.stat(second.directory / name).st_mode) == 0o600
    overrides = second.settings_overrides(("https://fhir.example.org",))
    assert (
        overrides["CDS_FHIR_ALLOWED_SERVERS"] == "https://fhir.example.org,http://127.0.0.1:8080/sandbox/fhir"
    )


def test_tokens_are_es384_for_the_asked_audience_and_verify_with_the_published_jwks(sandbox_client):
    aud = "http://localhost/cds-services/medication-order-check"
    minted = sandbox_client.post("/sandbox/api/token", json={"aud": aud}).get_json()
    jwks = sandbox_client.get("/sandbox/.well-known/jwks.json").get_json()
    assert "d" not in jwks["keys"][0]  # never the private part
    header = jwt.get_unverified_header(minted["token"])
    assert header["alg"] == "ES384" and header["jku"] == "http://localhost/sandbox/.well-known/jwks.json"
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(minted["token"], key.key, algorithms=["ES384"], audience=aud)
    assert claims["iss"] == "http://localhost/sandbox" and claims["exp"] - claims["iat"] == 300
    other = sandbox_client.post("/sandbox/api/token", json={"aud": aud}).get_json()
    assert jwt.decode(other["token"], options={"verify_signature": False})["jti"] != claims["jti"]
    assert sandbox_client.post("/sandbox/api/token", json={"aud": "file:///etc"}).status_code == 400


# ---- what the page reads -------------------------------------------------------------------------


def test_config_names_the_endpoints_and_the_trust_configuration(sandbox_client):
    config = sandbox_client.get("/sandbox/api/config").get_json()
    assert config["fhirServer"] == "http://localhost/sandbox/fhir"
    assert config["discoveryUrl"] == "http://localhost/cds-services"
    assert config["cdsClients"]["clients"][-1]["iss"] == config["issuer"]
    audit = sandbox_client.get(
        "/audit/decisions", headers={"Authorization": f"Bearer {config['auditToken']}"}
    )
    assert audit.status_code == 200  # the sandbox auditor token opens the auditor API


def test_patients_and_a_chart_summary(sandbox_client):
    patients = sandbox_client.get("/sandbox/api/patients").get_json()["patients"]
    max_dicki = next(p for p in patients if p["id"] == MAX_DICKI)
    assert max_dicki["name"] == "Max Dicki" and max_dicki["origin"] == "synthea" and max_dicki["age"] > 70
    chart = sandbox_client.get(f"/sandbox/api/patients/{MAX_DICKI}/chart").get_json()
    assert "Warfarin Sodium 5 MG Oral Tablet" in [
        m["display"] for m in chart["medications"] if m["status"] == "active"
    ]
    assert chart["labs"] and [lab["date"] for lab in chart["labs"]] == sorted(
        (lab["date"] for lab in chart["labs"]), reverse=True
    )
    assert any("Aleve" in note["text"] for note in chart["notes"])  # his hand-written note, decoded
    assert sandbox_client.get("/sandbox/api/patients/nobody/chart").status_code == 404


def test_medication_picker_matches_every_word_typed(sandbox_client):
    found = sandbox_client.get("/sandbox/api/medications?q=warf 5 mg").get_json()["medications"]
    assert found and all("warf" in m["display"].lower() and "5 mg" in m["display"].lower() for m in found)
    assert all(m["system"] == RXNORM and m["code"].isdigit() for m in found)
    assert sandbox_client.get("/sandbox/api/medications?q=").get_json()["medications"] == []


def test_prefetch_is_resolved_from_the_templates_as_an_ehr_would(sandbox_client):
    services = {s["id"]: s for s in sandbox_client.get("/cds-services").get_json()["services"]}
    templates = services["medication-order-check"]["prefetch"]
    context = {"userId": "Practitioner/sandbox-clinician", "patientId": MAX_DICKI}
    out = sandbox_client.post(
        "/sandbox/api/prefetch", json={"prefetch": templates, "context": context}
    ).get_json()["prefetch"]
    assert set(out) == set(templates)
    assert out["patient"]["value"]["id"] == MAX_DICKI and out["patient"]["url"] == f"Patient/{MAX_DICKI}"
    meds = out["medications"]["value"]
    assert meds["type"] == "searchset" and meds["total"] == len(meds["entry"]) > 0
    assert all(e["resource"]["status"] == "active" for e in meds["entry"])
    assert "{{" not in out["labs"]["url"] and "date=ge" in out["labs"]["url"]
    bad = sandbox_client.post(
        "/sandbox/api/prefetch",
        json={"prefetch": {"x": "Patient/{{context.encounterId}}"}, "context": context},
    ).get_json()["prefetch"]["x"]
    assert bad["url"] is None and "resolves to nothing" in bad["problem"]


def test_card_checks_name_each_problem_by_its_path(sandbox_client):
    good = {
        "uuid": str(uuid.uuid4()),
        "summary": "fine",
        "indicator": "info",
        "source": {
            "label": "a source whose label is longer than one hundred and forty characters, which the "
            "specification allows, so it must not be reported as a problem at all"
        },
    }
    bad = {"summary": "x" * 150, "indicator": "urgent", "source": {}, "suggestions": [{"label": "do"}]}
    problems = sandbox_client.post(
        "/sandbox/api/check-cards", json={"response": {"cards": [good, bad]}}
    ).get_json()["problems"]
    paths = {p["path"] for p in problems}
    assert {"cards[1].summary", "cards[1].indicator", "cards[1].source.label", "cards[1].uuid"} <= paths
    assert not any(p.startswith("cards[0]") for p in paths)
    assert sandbox_client.post(
        "/sandbox/api/check-cards", json={"response": {"cards": [good]}}
    ).get_json() == {"problems": []}


def test_the_page_and_its_assets_are_served_with_a_content_security_policy(sandbox_client):
    page = sandbox_client.get("/sandbox/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "http" not in csp.replace("connect-src *", "")
    html = page.get_data(as_text=True)
    assert "<script" in html and "//cdn" not in html and "https://" not in html.split("<body")[0]
    pdca = sandbox_client.get("/sandbox/pdca")
    assert pdca.status_code == 200 and "<html" in pdca.get_data(as_text=True).lower()
    assert pdca.headers["X-Frame-Options"] == "SAMEORIGIN"


# ---- the whole round trip, as the page makes it --------------------------------------------------


def _order_sign(config: dict, *, prefetch: dict | None) -> dict:
    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [IBUPROFEN], "text": IBUPROFEN["display"]},
        "subject": {"reference": f"Patient/{MAX_DICKI}"},
    }
    context = {
        "userId": config["userId"],
        "patientId": MAX_DICKI,
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
    }
    return hook_request(config, "order-sign", context, prefetch)


def hook_request(config: dict, hook: str, context: dict, prefetch: dict | None) -> dict:
    """A hook request as the sandbox page builds it: its FHIR server and a token always, prefetch if any."""
    body = {
        "hookInstance": str(uuid.uuid4()),
        "hook": hook,
        "fhirServer": config["fhirServer"],
        "fhirAuthorization": {
            "access_token": "sandbox",
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "patient/*.read",
            "subject": "cds-service-sandbox",
        },
        "context": context,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


@pytest.mark.slow
def test_round_trip_against_serve_with_the_sandbox(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_serve(port, tmp_path / "data", "--sandbox")
    try:
        wait_ready(base)
        config = requests.get(f"{base}/sandbox/api/config", timeout=10).json()

        def signed(url: str) -> dict:
            token = requests.post(f"{base}/sandbox/api/token", json={"aud": url}, timeout=10).json()["token"]
            return {"Authorization": f"Bearer {token}"}

        discovery_url = f"{base}/cds-services"
        assert requests.get(discovery_url, timeout=10).status_code == 401  # trust is on, as in production
        services = requests.get(discovery_url, headers=signed(discovery_url), timeout=10).json()["services"]
        service = next(s for s in services if s["id"] == "medication-order-check")
        url = f"{base}/cds-services/medication-order-check"

        fetched = requests.post(url, json=_order_sign(config, prefetch=None), headers=signed(url), timeout=30)
        assert fetched.status_code == 200, fetched.text
        summaries = [c["summary"] for c in fetched.json()["cards"]]
        assert any("Ibuprofen" in s and "Warfarin" in s for s in summaries)
        audit = {"Authorization": f"Bearer {config['auditToken']}"}
        record = requests.get(
            f"{base}/audit/decisions/{fetched.headers['X-Decision-Id']}", headers=audit, timeout=10
        ).json()
        assert record["client"] == {"id": config["issuer"], "authenticated": True}
        origins = {d["key"]: d["origin"] for d in record["data"] if d["key"] in service["prefetch"]}
        assert set(origins) == set(service["prefetch"]) and set(origins.values()) == {"fetched"}

        resolved = requests.post(
            f"{base}/sandbox/api/prefetch",
            json={
                "prefetch": service["prefetch"],
                "context": {"userId": config["userId"], "patientId": MAX_DICKI},
            },
            timeout=10,
        ).json()["prefetch"]
        sent = requests.post(
            url,
            json=_order_sign(config, prefetch={k: v["value"] for k, v in resolved.items()}),
            headers=signed(url),
            timeout=30,
        )
        assert sorted(c["summary"] for c in sent.json()["cards"]) == sorted(
            summaries
        )  # fetch path == prefetch path
        card = next(c for c in sent.json()["cards"] if "Ibuprofen" in c["summary"])
        feedback_url = f"{url}/feedback"
        answer = requests.post(
            feedback_url,
            json={
                "feedback": [
                    {
                        "card": card["uuid"],
                        "outcome": "accepted",
                        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                        "outcomeTimestamp": "2026-12-01T10:00:00Z",
                    }
                ]
            },
            headers=signed(feedback_url),
            timeout=10,
        )
        assert answer.json() == {"received": 1, "recorded": 1}
        replayed_headers = signed(url)
        assert (
            requests.post(
                url, json=_order_sign(config, prefetch=None), headers=replayed_headers, timeout=30
            ).status_code
            == 200
        )
        assert (
            requests.post(
                url, json=_order_sign(config, prefetch=None), headers=replayed_headers, timeout=30
            ).status_code
            == 401
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_every_demonstration_fires_through_the_sandbox_fhir_endpoint_fetched_or_prefetched(tmp_path):
    """Each hand-made patient's demonstrations, sent as the page sends them: once with no prefetch (the
    service fetches every key from the sandbox FHIR endpoint: date windows, status/category/code filters,
    paging) and once with the prefetch the sandbox resolved. Both must fire exactly what the patient promises,
    and every Synthea chart must get the same cards both ways."""
    from cds_service.sandbox.patients import demonstrations, load_patients
    from cds_service.sandbox.samples import sample_charts
    from cds_service.settings import Settings

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_serve(port, tmp_path / "data", "--sandbox", "--threads", "8")
    try:
        wait_ready(base)
        config = requests.get(f"{base}/sandbox/api/config", timeout=10).json()
        audit = {"Authorization": f"Bearer {config['auditToken']}"}
        session = requests.Session()

        def signed(url: str) -> dict:
            token = session.post(f"{base}/sandbox/api/token", json={"aud": url}, timeout=10).json()["token"]
            return {"Authorization": f"Bearer {token}"}

        discovery = f"{base}/cds-services"
        services = {
            s["id"]: s
            for s in session.get(discovery, headers=signed(discovery), timeout=10).json()["services"]
        }

        def call(service_id: str, context: dict, prefetched: bool) -> tuple[list[str], set[str]]:
            body = hook_request(config, services[service_id]["hook"], context, None)
            if prefetched:
                resolved = session.post(
                    f"{base}/sandbox/api/prefetch",
                    json={"prefetch": services[service_id].get("prefetch", {}), "context": context},
                    timeout=30,
                ).json()["prefetch"]
                body["prefetch"] = {k: v["value"] for k, v in resolved.items()}
            url = f"{discovery}/{service_id}"
            answer = session.post(url, json=body, headers=signed(url), timeout=60)
            assert answer.status_code == 200, answer.text
            record = session.get(
                f"{base}/audit/decisions/{answer.headers['X-Decision-Id']}", headers=audit, timeout=10
            ).json()
            fired = {r["id"] for r in record["rules"] if r["status"] == "active" and r["outcome"] == "fired"}
            return sorted(c["summary"] for c in answer.json()["cards"]), fired

        wrong = []
        for _, demo in demonstrations(
            load_patients(ROOT_FHIR / "samples" / "sandbox" / "patients.yaml", TODAY())
        ):
            for prefetched in (False, True):
                _, fired = call(demo.service, demo.context(config["userId"]), prefetched)
                if fired != set(demo.expect):
                    wrong.append(
                        (demo.name, "prefetch" if prefetched else "fetch", sorted(fired), demo.expect)
                    )
        assert wrong == []

        charts = [c for c in sample_charts(Settings.load().fhir_dir) if c.origin == "synthea"]
        differ = []
        for chart in charts:
            context = {"userId": config["userId"], "patientId": chart.patient_id}
            for service_id in ("patient-chart-review", "opioidcds-11-patient-view"):
                if call(service_id, context, False) != call(service_id, context, True):
                    differ.append((chart.patient_id, service_id))
        assert differ == [] and len(charts) >= 13
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_vendored_libraries_are_the_published_files_the_readme_names():
    """marked and DOMPurify are copied unchanged from their npm tarballs; an edit would go unnoticed."""
    import hashlib
    import re

    vendor = Path(__file__).resolve().parents[1] / "cds_service" / "sandbox" / "static" / "vendor"
    rows = re.findall(
        r"^\| `([^`]+\.js)` \|.*\| `([0-9a-f]{64})` \|$", (vendor / "README.md").read_text(), re.M
    )
    assert {name for name, _ in rows} == {p.name for p in vendor.glob("*.js")} != set()
    for name, digest in rows:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
