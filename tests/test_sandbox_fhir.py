"""The sandbox FHIR endpoint: sample charts moved to today, read and search as the prefetch templates use
them, and what the official CDS Hooks Sandbox needs (CapabilityStatement, POST _search, CORS)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from cds_service.sandbox.samples import (
    bundle_resources,
    days_to_yesterday,
    newest_clinical_date,
    sample_bundles,
    shift_dates,
)
from cds_service.sandbox.search import date_range
from cds_service.sandbox.trust import prepare

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT / "fhir" / "samples" / "synthea-r4"
MAX_DICKI = "8008b382-91cc-468f-95e5-7d6982b7ebb9"  # warfarin, digoxin, verapamil; OTC naproxen in a note


def _get(client, url, **kw):
    response = client.get(url, **kw)
    return response.status_code, response.get_json(force=True)


# ---- sample charts -------------------------------------------------------------------------------


def test_shift_dates_moves_dates_datetimes_and_periods_by_whole_days_and_nothing_else():
    resource = {
        "resourceType": "Observation",
        "id": "2020-01-01",  # a valid FHIR id that looks like a date
        "identifier": [{"system": "urn:x", "value": "2020-01-01"}],
        "effectiveDateTime": "2020-02-28T10:15:00+02:00",
        "issued": "2020-02-28T10:15:00.123Z",
        "effectivePeriod": {"start": "2020-12-31", "end": "2021-01-01"},
        "code": {"text": "seen 2020-02-28 in clinic"},
        "valueString": "2020",
        "note": [{"text": "2021-02-30"}],
    }
    shift_dates(resource, 2)
    assert resource["id"] == resource["identifier"][0]["value"] == "2020-01-01"
    assert resource["effectiveDateTime"] == "2020-03-01T10:15:00+02:00"  # leap year honoured
    assert resource["issued"] == "2020-03-01T10:15:00.123Z"
    assert resource["effectivePeriod"] == {"start": "2021-01-02", "end": "2021-01-03"}
    assert resource["code"]["text"] == "seen 2020-02-28 in clinic"  # text, not a date value
    assert resource["valueString"] == "2020"  # a bare year is not moved by days
    assert resource["note"][0]["text"] == "2021-02-30"  # not a real date: left alone


def test_each_synthea_chart_ends_yesterday_with_intervals_kept_and_references_resolved():
    today = date(2026, 12, 2)
    bundle = json.loads((SYNTHEA / f"Max_Dicki_{'d9f8849f-e4a7-4ced-b057-c618db16a117'}.json").read_text())
    original = bundle_resources(bundle)
    days = days_to_yesterday(original, today)
    moved = shift_dates(bundle_resources(bundle), days)
    assert newest_clinical_date(moved) == today - timedelta(days=1)
    before = {r["id"]: r for r in original}
    for r in moved:  # every event keeps its distance from the patient's birth
        if r["resourceType"] == "MedicationRequest":
            born = date.fromisoformat(before[MAX_DICKI]["birthDate"])
            was = date.fromisoformat(before[r["id"]]["authoredOn"][:10]) - born
            born_now = date.fromisoformat(next(p for p in moved if p["id"] == MAX_DICKI)["birthDate"])
            assert date.fromisoformat(r["authoredOn"][:10]) - born_now == was
            assert r["subject"] == {"reference": f"Patient/{MAX_DICKI}"}  # was urn:uuid:
    assert not any("urn:uuid:" in json.dumps(r) for r in moved if r["resourceType"] != "Patient")


def test_sample_bundles_load_as_put_transactions_of_every_chart():
    from cds_service.sandbox.loading import as_transaction

    bundles = sample_bundles(ROOT / "fhir", date(2026, 12, 2))
    assert len(bundles) >= len(list(SYNTHEA.glob("*.json")))
    for _, bundle in bundles:
        transaction = as_transaction(bundle)
        assert len(transaction["entry"]) == len(bundle["entry"])  # every resource, each under its own id
        assert all(
            e["request"] == {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}
            for e in transaction["entry"]
        )


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2025", "2025-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
        ("2025-12", "2025-12-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
        ("2025-02-28", "2025-02-28T00:00:00+00:00", "2025-03-01T00:00:00+00:00"),
        ("2025-02-28T23:30:00+02:00", "2025-02-28T21:30:00+00:00", "2025-02-28T21:30:01+00:00"),
    ],
)
def test_a_date_stands_for_the_range_its_precision_gives(text, start, end):
    low, high = date_range(text)
    assert (low.isoformat(), high.isoformat()) == (start, end)


# ---- read and search -----------------------------------------------------------------------------


def test_metadata_is_an_r4_capability_statement_naming_the_prefetch_parameters(sandbox_client):
    status, body = _get(sandbox_client, "/sandbox/fhir/metadata")
    assert status == 200 and body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"
    by_type = {r["type"]: r for r in body["rest"][0]["resource"]}
    params = {p["name"] for p in by_type["Observation"]["searchParam"]}
    assert {"subject", "patient", "code", "category", "status", "date"} <= params
    assert {"authoredon", "status", "medication"} <= {
        p["name"] for p in by_type["MedicationRequest"]["searchParam"]
    }


def test_read_answers_the_resource_or_a_404_operation_outcome(sandbox_client):
    response = sandbox_client.get(f"/sandbox/fhir/Patient/{MAX_DICKI}")
    assert response.status_code == 200 and response.mimetype == "application/fhir+json"
    assert response.get_json(force=True)["id"] == MAX_DICKI
    status, body = _get(sandbox_client, "/sandbox/fhir/Patient/nobody")
    assert status == 404 and body["resourceType"] == "OperationOutcome"
    status, body = _get(sandbox_client, "/sandbox/fhir/Spaceship/1")
    assert status == 404 and body["issue"][0]["expression"] == ["type"]


def test_search_pages_follow_next_links_to_every_match_once(sandbox_client):
    url = f"/sandbox/fhir/Observation?subject=Patient/{MAX_DICKI}&_count=7"
    status, first = _get(sandbox_client, url)
    assert status == 200 and first["type"] == "searchset" and first["total"] > 7
    seen, page, pages = [], first, 0
    while True:
        pages += 1
        seen += [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "match"]
        assert all(e["fullUrl"].endswith(f"/Observation/{e['resource']['id']}") for e in page["entry"])
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        parts = urlsplit(nxt[0])
        assert parts.path == "/sandbox/fhir/Observation"
        status, page = _get(sandbox_client, f"{parts.path}?{parts.query}")
    assert len(seen) == len(set(seen)) == first["total"] and pages == -(-first["total"] // 7)


def test_search_filters_by_status_code_category_and_date(sandbox_client):
    _, active = _get(
        sandbox_client, f"/sandbox/fhir/MedicationRequest?subject=Patient/{MAX_DICKI}&status=active"
    )
    _, everything = _get(
        sandbox_client, f"/sandbox/fhir/MedicationRequest?subject=Patient/{MAX_DICKI}&_count=500"
    )
    assert 0 < active["total"] < everything["total"]
    assert all(e["resource"]["status"] == "active" for e in active["entry"])
    warfarin = "http://www.nlm.nih.gov/research/umls/rxnorm|855332"
    _, coded = _get(
        sandbox_client, f"/sandbox/fhir/MedicationRequest?subject=Patient/{MAX_DICKI}&code={warfarin}"
    )
    assert coded["total"] >= 1 and all("855332" in json.dumps(e["resource"]) for e in coded["entry"])
    _, labs = _get(
        sandbox_client, f"/sandbox/fhir/Observation?patient={MAX_DICKI}&category=laboratory&_count=500"
    )
    assert labs["total"] > 0 and all(
        "laboratory" in json.dumps(e["resource"]["category"]) for e in labs["entry"]
    )
    dates = sorted(e["resource"]["effectiveDateTime"] for e in labs["entry"])
    cut = dates[len(dates) // 2][:10]
    _, recent = _get(
        sandbox_client,
        f"/sandbox/fhir/Observation?patient={MAX_DICKI}&category=laboratory&date=ge{cut}&_count=500",
    )
    _, older = _get(
        sandbox_client,
        f"/sandbox/fhir/Observation?patient={MAX_DICKI}&category=laboratory&date=lt{cut}&_count=500",
    )
    assert recent["total"] + older["total"] == labs["total"] and 0 < recent["total"] < labs["total"]
    assert all(e["resource"]["effectiveDateTime"][:10] >= cut for e in recent["entry"])


def test_sort_and_include(sandbox_client):
    _, page = _get(
        sandbox_client, f"/sandbox/fhir/Observation?subject=Patient/{MAX_DICKI}&_sort=-date&_count=50"
    )
    dates = [e["resource"]["effectiveDateTime"] for e in page["entry"]]
    assert dates == sorted(dates, reverse=True)
    _, included = _get(
        sandbox_client,
        f"/sandbox/fhir/MedicationRequest?subject=Patient/{MAX_DICKI}&_include=MedicationRequest:subject",
    )
    modes = [e["search"]["mode"] for e in included["entry"]]
    assert modes.count("include") == 1 and included["entry"][-1]["resource"]["id"] == MAX_DICKI


def test_unknown_parameters_are_said_or_refused_when_strict(sandbox_client):
    _, body = _get(sandbox_client, f"/sandbox/fhir/Condition?subject=Patient/{MAX_DICKI}&colour=blue")
    outcome = body["entry"][-1]
    assert outcome["search"]["mode"] == "outcome" and outcome["resource"]["issue"][0]["expression"] == [
        "colour"
    ]
    assert "colour" not in body["link"][0]["url"]
    status, body = _get(
        sandbox_client, "/sandbox/fhir/Condition?colour=blue", headers={"Prefer": "handling=strict"}
    )
    assert status == 400 and body["issue"][0]["expression"] == ["colour"]
    status, body = _get(sandbox_client, "/sandbox/fhir/Observation?date=2025-13-01")
    assert status == 400 and body["issue"][0]["expression"] == ["date"]
    status, body = _get(sandbox_client, "/sandbox/fhir/Observation?code:below=1234")
    assert status == 400 and body["issue"][0]["expression"] == ["code:below"]


def test_post_search_takes_form_parameters_like_get(sandbox_client):
    query = f"subject=Patient/{MAX_DICKI}&category=laboratory&_count=500"
    _, by_get = _get(sandbox_client, f"/sandbox/fhir/Observation?{query}")
    response = sandbox_client.post(
        "/sandbox/fhir/Observation/_search",
        data=dict(parse_qsl(query)),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert response.get_json(force=True)["total"] == by_get["total"] > 0
    wrong = sandbox_client.post("/sandbox/fhir/Observation/_search", json={"subject": "x"})
    assert wrong.status_code == 400


def test_cors_preflight_and_exposed_headers(sandbox_client):
    preflight = sandbox_client.options(
        "/sandbox/fhir/Observation/_search",
        headers={
            "Origin": "http://localhost:8000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] in ("*", "http://localhost:8000")
    response = sandbox_client.get("/cds-services", headers={"Origin": "http://localhost:8000"})
    exposed = response.headers.get("Access-Control-Expose-Headers", "")
    assert "Server-Timing" in exposed and "X-Decision-Id" in exposed


def test_the_sandbox_is_off_unless_asked_for(client):
    assert client.get("/sandbox/fhir/metadata").status_code == 404
    assert client.get("/sandbox/").status_code == 404


def test_the_sandbox_does_not_spend_the_cds_clients_rate_limit(make_app, tmp_path):
    """The service fetching from its own sandbox FHIR endpoint (one address: loopback) must not be throttled
    like a CDS client, nor throttle the clients."""
    setup = prepare(tmp_path / "data", "http://localhost")
    overrides = setup.settings_overrides(())
    del overrides["CDS_CLIENTS"]
    client = make_app(CDS_RATE_LIMIT_PER_MINUTE="3", **overrides).test_client()
    assert {client.get("/sandbox/fhir/metadata").status_code for _ in range(10)} == {200}
    assert [client.get("/cds-services").status_code for _ in range(4)] == [200, 200, 200, 429]


# ---- found by a black-box review --------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["date=9999-12-31", "date=9999", "date=0001-01-01T00:00%2B01:00", "date=le9999-12-31T23:59-01:00"],
)
def test_dates_at_the_ends_of_the_calendar_are_searched_not_crashed_on(sandbox_client, query):
    status, body = _get(sandbox_client, f"/sandbox/fhir/Observation?subject=Patient/{MAX_DICKI}&{query}")
    assert status == 200 and body["type"] == "searchset"


def test_fractional_seconds_narrow_a_date_to_that_instant(sandbox_client):
    _, labs = _get(sandbox_client, f"/sandbox/fhir/Observation?subject=Patient/{MAX_DICKI}&_count=1")
    when = labs["entry"][0]["resource"]["effectiveDateTime"]  # whole seconds, e.g. ...T04:55:29+00:00
    seconds, zone = when[:19], when[19:]
    _, whole = _get(
        sandbox_client,
        f"/sandbox/fhir/Observation?subject=Patient/{MAX_DICKI}&date={seconds}{zone}".replace("+", "%2B"),
    )
    _, later = _get(
        sandbox_client,
        f"/sandbox/fhir/Observation?subject=Patient/{MAX_DICKI}&date={seconds}.123{zone}".replace("+", "%2B"),
    )
    # eq: the search range (that millisecond) must contain the value's range (its whole second): none does
    assert whole["total"] >= 1 and later["total"] == 0


def test_empty_results_have_no_empty_entry_array(sandbox_client):
    _, body = _get(sandbox_client, "/sandbox/fhir/Patient?gender=nope")
    assert body["total"] == 0 and "entry" not in body  # FHIR JSON allows no empty arrays


def test_string_exact_matches_any_name_part_and_sort_by_name_is_by_family(sandbox_client):
    _, exact = _get(sandbox_client, "/sandbox/fhir/Patient?name:exact=Sandbox&_count=100")
    _, family = _get(sandbox_client, "/sandbox/fhir/Patient?family:exact=Sandbox&_count=100")
    assert exact["total"] == family["total"] > 0
    _, lower = _get(sandbox_client, "/sandbox/fhir/Patient?name:exact=sandbox")
    assert lower["total"] == 0  # exact: case counts
    _, everyone = _get(sandbox_client, "/sandbox/fhir/Patient?_sort=name&_count=1000")
    families = [e["resource"]["name"][0]["family"].lower() for e in everyone["entry"]]
    assert families == sorted(families)


def test_absolute_references_match_only_on_this_server(sandbox_client):
    relative = f"/sandbox/fhir/Observation?subject=Patient/{MAX_DICKI}"
    _, here = _get(sandbox_client, relative)
    _, own = _get(
        sandbox_client, f"/sandbox/fhir/Observation?subject=http://localhost/sandbox/fhir/Patient/{MAX_DICKI}"
    )
    _, elsewhere = _get(
        sandbox_client,
        f"/sandbox/fhir/Observation?subject=https://elsewhere.example/fhir/Patient/{MAX_DICKI}",
    )
    assert own["total"] == here["total"] > 0 and elsewhere["total"] == 0


def test_result_parameters_not_applied_are_said_and_modifiers_are_checked_per_type(sandbox_client):
    _, body = _get(
        sandbox_client,
        f"/sandbox/fhir/Condition?subject=Patient/{MAX_DICKI}&_summary=true&_include:iterate=Condition:subject",
    )
    said = {i["expression"][0] for i in body["entry"][-1]["resource"]["issue"]}
    assert said == {"_summary", "_include:iterate"}
    status, body = _get(sandbox_client, "/sandbox/fhir/Observation?code:exact=1234-5")
    assert status == 400 and body["issue"][0]["expression"] == ["code:exact"]


def test_the_pages_backend_is_same_origin_and_answers_only_at_its_own_address(sandbox_client):
    evil = {"Origin": "https://evil.example"}
    config = sandbox_client.get("/sandbox/api/config", headers=evil)
    assert "Access-Control-Allow-Origin" not in config.headers  # a page elsewhere cannot read the audit token
    fhir = sandbox_client.get("/sandbox/fhir/metadata", headers=evil)
    assert fhir.headers["Access-Control-Allow-Origin"] in (
        "*",
        "https://evil.example",
    )  # the FHIR server is open
    plain = sandbox_client.post(
        "/sandbox/api/token", data='{"aud": "http://localhost/cds-services"}', content_type="text/plain"
    )
    assert plain.status_code == 415  # no "simple" cross-site POST gets a JWT signed
    rebound = sandbox_client.get("/sandbox/api/config", headers={"Host": "attacker.example:8080"})
    assert rebound.status_code == 403 and rebound.get_json()["issue"][0]["expression"] == ["Host"]
    assert (
        sandbox_client.get("/sandbox/fhir/metadata", headers={"Host": "attacker.example:8080"}).status_code
        == 200
    )
    preflight = sandbox_client.options(
        "/audit/decisions",
        headers={
            "Origin": "https://auditor.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200  # an auditor's browser tool may ask; the token is still required


def test_prefetch_resolution_refuses_what_the_fhir_server_would(sandbox_client):
    context = {"userId": "Practitioner/x", "patientId": MAX_DICKI}
    templates = {
        "type": "{{context.patientId}}",
        "slash": "Patient/",
        "empty": "?x=1",
        "read": "Patient/{{context.patientId}}?x=1",
    }
    out = sandbox_client.post(
        "/sandbox/api/prefetch", json={"prefetch": templates, "context": context}
    ).get_json()["prefetch"]
    assert all(out[k]["value"] is None and out[k]["problem"] for k in templates), out
