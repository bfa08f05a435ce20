"""The decision log: one record per call before the answer, tamper evidence, retention, concurrency,
PostgreSQL over a real connection, auditor access (CLI, FHIR export, HTTP API)."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import uuid
from pathlib import Path

import builders
import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, update

from cds_service.audit.auditors import AuditorTokens, create_token
from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.export import export_bundle
from cds_service.audit.record import DecisionRecord
from cds_service.audit.retention import purge
from cds_service.audit.storage import decisions, init_schema, make_engine
from cds_service.cli import main

ROOT = Path(__file__).resolve().parents[1]
ORDER_SIGN = "/cds-services/medication-order-check"
TOKEN = "tok-decision-log-9d8f"
CASE = {
    "patient": {"age": 70, "gender": "female", "name": [{"family": "Uniquename-Zq7"}]},
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
}


def _record(app, response) -> dict:
    return app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])


def test_every_call_is_recorded_with_what_an_auditor_needs(app):
    body = builders.order_sign(
        CASE,
        fhirServer="https://ehr.example.test/fhir",
        fhirAuthorization={
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "cds",
        },
    )
    response = app.test_client().post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    record = _record(app, response)
    assert record["hookInstance"] == body["hookInstance"] and record["hook"] == "order-sign"
    assert record["service"]["id"] == "medication-order-check"
    assert record["patient"] == "Patient/case-patient" and record["user"] == "Practitioner/case-user"
    assert record["fhirServer"] == "https://ehr.example.test/fhir"
    assert record["fhirAuthorization"] == {"scope": "user/*.read", "subject": "cds", "expires_in": 300}
    assert record["client"] == {"id": None, "authenticated": False}
    data = {d["key"]: d for d in record["data"]}
    assert data["patient"]["origin"] == "prefetch" and len(data["patient"]["resources"][0]["hash"]) == 64
    assert data["context.draftOrders"]["resources"][0]["reference"].startswith("MedicationRequest/")
    rules = {r["id"]: r for r in record["rules"]}
    assert (
        rules["ddi-warfarin-nsaid"]["outcome"] == "fired"
        and rules["duplicate-ingredient"]["outcome"] == "not-fired"
    )
    assert record["response"]["cards"] == response.get_json()["cards"]
    assert {"parse", "prefetch", "validate", "facts", "rules", "cards", "total"} <= set(record["timingsMs"])
    raw = json.dumps(record)
    assert TOKEN not in raw  # never the access token
    assert "Uniquename-Zq7" not in raw  # patient data by reference and hash, not copied


def test_rejected_calls_are_recorded_too(app):
    client = app.test_client()
    bad = builders.order_sign(CASE)
    del bad["context"]["patientId"]  # the EHR's own request is wrong: 400 (bad data in prefetch is not)
    r400 = client.post(ORDER_SIGN, json=bad)
    r412 = client.post(ORDER_SIGN, json=builders.order_sign(CASE, prefetch_keys=()))
    log = app.extensions["cds_runtime"].storage.decision_log
    assert log.count() == 2
    with log.engine.connect() as conn:
        statuses = [row.status for row in conn.execute(select(decisions.c.status).order_by(decisions.c.seq))]
    assert statuses == [400, 412] and r400.status_code == 400 and r412.status_code == 412


def test_shadow_rules_are_evaluated_and_recorded_without_a_card(make_app, tmp_path):
    content = tmp_path / "content"
    for folder in ("hooks", "rules", "fhir"):
        shutil.copytree(ROOT / folder, content / folder)
    rule = content / "rules" / "drug-interactions" / "ddi-warfarin-nsaid.yaml"
    rule.write_text(rule.read_text().replace("status: active", "status: shadow", 1))
    app = make_app(CDS_CONTENT_DIR=str(content))
    response = app.test_client().post(ORDER_SIGN, json=builders.order_sign(CASE))
    assert not any(
        c["extension"]["org.cds-service.rule"]["id"] == "ddi-warfarin-nsaid"
        for c in response.get_json()["cards"]
    )
    entry = next(r for r in _record(app, response)["rules"] if r["id"] == "ddi-warfarin-nsaid")
    assert entry["status"] == "shadow" and entry["outcome"] == "fired"


def _log_with(tmp_path, n=5) -> DecisionLog:
    engine = make_engine(f"sqlite:///{tmp_path / 'chain.sqlite3'}")
    init_schema(engine)
    log = DecisionLog(engine)
    for i in range(n):
        log.append(_fake_record(i))
    return log


def _fake_record(i: int, when: str = "2026-11-26T10:00:00.000000Z") -> DecisionRecord:
    return DecisionRecord(
        {
            "id": str(uuid.uuid4()),
            "recordedAt": when,
            "service": {"id": "svc"},
            "hook": "order-sign",
            "hookInstance": str(uuid.uuid4()),
            "patient": f"Patient/p{i}",
            "user": "Practitioner/u",
            "client": {"id": None, "authenticated": False},
            "data": [],
            "rules": [],
            "llm": None,
            "response": {"status": 200, "cards": []},
            "timingsMs": {"total": 1.0},
        }
    )


@pytest.mark.parametrize(
    "tamper, bad_seq",
    [
        ("edit", 3),
        ("edit_column", 2),
        ("delete_middle", 4),
        ("reorder", 2),
        ("delete_tail", 5),
        ("insert", 6),
    ],
)
def test_verify_names_the_first_bad_record(tmp_path, tamper, bad_seq):
    log = _log_with(tmp_path)
    assert log.verify().ok and log.verify().checked == 5
    with log.engine.begin() as conn:
        rows = {r.seq: r for r in conn.execute(select(decisions))}
        if tamper == "edit":
            record = json.loads(rows[3].record)
            record["response"]["status"] = 500
            conn.execute(
                update(decisions)
                .where(decisions.c.seq == 3)
                .values(record=json.dumps(record, sort_keys=True, separators=(",", ":")))
            )
        elif tamper == "edit_column":
            conn.execute(update(decisions).where(decisions.c.seq == 2).values(patient_ref="Patient/other"))
        elif tamper == "delete_middle":
            conn.execute(decisions.delete().where(decisions.c.seq == 3))
        elif tamper == "reorder":
            conn.execute(update(decisions).where(decisions.c.seq == 2).values(seq=-2))
            conn.execute(update(decisions).where(decisions.c.seq == 3).values(seq=2))
            conn.execute(update(decisions).where(decisions.c.seq == -2).values(seq=3))
        elif tamper == "delete_tail":
            conn.execute(decisions.delete().where(decisions.c.seq == 5))
        elif tamper == "insert":
            forged = dict(rows[5]._mapping, seq=6, id=str(uuid.uuid4()), hash="f" * 64)
            conn.execute(decisions.insert().values(**forged))
    report = log.verify()
    assert not report.ok and report.first_bad_seq == bad_seq, report


def test_purge_keeps_the_rest_of_the_chain_verifiable(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'chain.sqlite3'}")
    init_schema(engine)
    log = DecisionLog(engine)
    for i in range(3):
        log.append(_fake_record(i, "2019-01-01T00:00:00.000000Z"))
    for i in range(3, 6):
        log.append(_fake_record(i, "2099-01-01T00:00:00.000000Z"))
    assert purge(log, 365) == 3
    report = log.verify()
    assert report.ok and report.checked == 3
    log.append(_fake_record(9))
    assert log.verify().ok and log.verify().checked == 4


def _append_many(url: str, n: int) -> None:
    log = DecisionLog(make_engine(url))
    for i in range(n):
        log.append(_fake_record(i))


def _concurrent_appends(url: str, processes: int = 4, each: int = 20) -> DecisionLog:
    engine = make_engine(url)
    init_schema(engine)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(url, each)) for _ in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    return DecisionLog(engine)


@pytest.mark.slow
def test_concurrent_appends_from_several_processes_keep_one_chain_sqlite(tmp_path):
    log = _concurrent_appends(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    report = log.verify()
    assert report.ok and report.checked == 80


@pytest.mark.postgres
def test_postgresql_end_to_end_and_concurrent(make_app, postgres_url):
    app = make_app(CDS_DECISION_LOG=postgres_url)
    client = app.test_client()
    response = client.post(ORDER_SIGN, json=builders.order_sign(CASE))
    assert response.status_code == 200
    log = app.extensions["cds_runtime"].storage.decision_log
    assert log.engine.dialect.name == "postgresql" and log.get(response.headers["X-Decision-Id"])
    card = response.get_json()["cards"][0]
    again = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "overrideReason": {"userComment": "x"},
            }
        ]
    }
    assert client.post(f"{ORDER_SIGN}/feedback", json=again).get_json() == {"received": 1, "recorded": 1}
    assert client.post(f"{ORDER_SIGN}/feedback", json=again).get_json() == {"received": 1, "recorded": 0}
    concurrent = _concurrent_appends(postgres_url)
    report = concurrent.verify()
    assert report.ok and report.checked == 81
    assert report.counts["feedback"] == 1 and report.counts["cards"] >= 1  # chained and derived tables too
    with concurrent.engine.begin() as conn:
        conn.execute(update(decisions).where(decisions.c.seq == 40).values(hook="patient-view"))
    assert concurrent.verify().first_bad_seq == 40


def test_fhir_export_is_valid_r4(app):
    from fhir.resources.R4B.bundle import Bundle

    client = app.test_client()
    client.post(ORDER_SIGN, json=builders.order_sign(CASE))
    bad = builders.order_sign(CASE, prefetch_keys=())
    client.post(ORDER_SIGN, json=bad)
    log = app.extensions["cds_runtime"].storage.decision_log
    from cds_service.audit.query import DecisionFilter, query

    records = query(log.engine, DecisionFilter())
    records[0]["llm"] = {
        "modelId": "m@int8",
        "task": "explanation",
        "items": [
            {"task": "explanation", "promptHash": "a" * 64, "status": "cached", "guard": {"accepted": True}}
        ],
    }
    bundle = export_bundle(records)
    Bundle.model_validate(bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["AuditEvent", "Provenance", "AuditEvent"]
    event = bundle["entry"][0]["resource"]
    assert event["outcome"] == "0" and bundle["entry"][2]["resource"]["outcome"] == "4"
    assert {"reference": "Patient/case-patient"} in [e["what"] for e in event["entity"]]


def test_audit_cli_verify_query_export(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path / "data"))
    app = make_app(CDS_DATA_DIR=str(tmp_path / "data"))
    client = app.test_client()
    for _ in range(2):
        client.post(ORDER_SIGN, json=builders.order_sign(CASE))
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify"])
    assert ok.exit_code == 0 and ok.output.startswith("ok: 2 records")
    rows = runner.invoke(
        main, ["audit", "query", "--patient", "case-patient", "--rule", "ddi-warfarin-nsaid"]
    )
    assert rows.exit_code == 0 and rows.output.count("medication-order-check") == 2
    none = runner.invoke(main, ["audit", "query", "--rule", "metformin-egfr-below-30"])
    assert "medication-order-check" not in none.output
    out = tmp_path / "export.json"
    assert runner.invoke(main, ["audit", "export", "--format", "fhir", "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["entry"][0]["resource"]["resourceType"] == "AuditEvent"
    log = app.extensions["cds_runtime"].storage.decision_log
    with log.engine.begin() as conn:
        conn.execute(update(decisions).where(decisions.c.seq == 1).values(service_id="other"))
    broken = runner.invoke(main, ["audit", "verify"])
    assert broken.exit_code == 1 and "seq 1" in broken.output


def test_audit_api_needs_an_auditor_token_separate_from_clients(make_app, tmp_path):
    disabled = make_app().test_client()
    assert disabled.get("/audit/decisions").status_code == 404
    token_file = tmp_path / "auditors"
    token = create_token(token_file, "committee")
    assert token not in token_file.read_text() and AuditorTokens(str(token_file)).auditor(f"Bearer {token}")
    app = make_app(CDS_AUDIT_TOKENS=str(token_file))
    client = app.test_client()
    response = client.post(ORDER_SIGN, json=builders.order_sign(CASE))
    assert client.get("/audit/decisions").status_code == 401
    assert client.get("/audit/decisions", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    listing = client.get("/audit/decisions?patient=case-patient&indicator=critical", headers=auth).get_json()
    assert listing["count"] == 1 and listing["decisions"][0]["rulesFired"] and listing["more"] is False
    one = client.get(f"/audit/decisions/{response.headers['X-Decision-Id']}", headers=auth).get_json()
    assert one["hookInstance"]
    assert client.get("/audit/verify", headers=auth).get_json()["ok"] is True
    export = client.get("/audit/export?service=medication-order-check", headers=auth)
    assert export.mimetype == "application/fhir+json" and export.get_json()["entry"]
    assert client.get("/audit/decisions?since=notadate", headers=auth).status_code == 400
    assert client.post("/audit/decisions", headers=auth).status_code == 405  # read-only


def test_a_log_line_leads_to_its_decision_by_request_id(make_app, tmp_path, monkeypatch):
    """The request id on the service's log lines is the decision's `requestId`; auditors look it up."""
    token_file = tmp_path / "auditors"
    token = create_token(token_file, "committee")
    app = make_app(CDS_AUDIT_TOKENS=str(token_file))
    client = app.test_client()
    mine = client.post(
        ORDER_SIGN, json=builders.order_sign(CASE), headers={"X-Request-Id": "req-7f3a-lookup"}
    )
    client.post(ORDER_SIGN, json=builders.order_sign(CASE))  # another call, another id
    assert mine.headers["X-Request-Id"] == "req-7f3a-lookup"
    auth = {"Authorization": f"Bearer {token}"}
    listing = client.get("/audit/decisions?requestId=req-7f3a-lookup", headers=auth).get_json()
    assert listing["count"] == 1 and listing["decisions"][0]["id"] == mine.headers["X-Decision-Id"]
    record = app.extensions["cds_runtime"].storage.decision_log.get(mine.headers["X-Decision-Id"])
    assert record["requestId"] == "req-7f3a-lookup"
    monkeypatch.setenv("CDS_DECISION_LOG", app.extensions["cds_runtime"].settings.decision_log_url)
    found = CliRunner().invoke(main, ["audit", "query", "--request-id", "req-7f3a-lookup"])
    assert found.exit_code == 0 and "listed 1 decisions" in found.output
    assert found.output.split()[0] == str(record["seq"])  # the line of that decision, by its seq
    assert app.extensions["cds_runtime"].storage.decision_log.verify().ok


def test_an_older_database_layout_is_refused_at_start_with_what_it_lacks(tmp_path):
    """create_all never alters an existing table: starting on an older layout must say so, not fail later."""
    from sqlalchemy import create_engine

    from cds_service.audit.storage import SchemaOutdated, open_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    open_engine(url).dispose()
    with create_engine(url).begin() as conn:  # the feedback table as an older version made it
        conn.execute(text("ALTER TABLE feedback DROP COLUMN prev_hash"))
        conn.execute(text("DROP TABLE alembic_version"))  # made before migrations existed
    with pytest.raises(SchemaOutdated, match="feedback lacks prev_hash"):
        open_engine(url)


def test_a_412_record_says_why_for_every_key(app):
    """Not only the status: the error names each missing key, and the data section lists every key with
    what happened to it (sent, or unavailable and why)."""
    client = app.test_client()
    body = builders.order_sign(CASE, prefetch_keys=("patient",))
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 412
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    assert record["response"] == {"status": 412}
    missing = {e for i in record["error"]["issue"] for e in i["expression"]}
    assert "prefetch.medications" in missing
    data = {d["key"]: d for d in record["data"]}
    assert data["patient"]["origin"] == "prefetch"
    assert data["medications"]["origin"] == "unavailable"
    assert "no fhirServer" in data["medications"]["problem"]


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "postgresql://127.0.0.1:5432/test"])
def test_database_errors_never_carry_bound_values(url):
    """A failing statement's message (logged by the app's error handler) shows the SQL, never the values:
    those are decision records, comments, patient references."""

    from cds_service.audit.storage import make_engine

    engine = make_engine(url)
    with pytest.raises(Exception) as caught, engine.connect() as conn:
        conn.execute(text("SELECT nope FROM no_such_table WHERE a = :a"), {"a": "Patient/secret-123"})
    engine.dispose()
    assert "no_such_table" in str(caught.value)  # the statement reached the database and failed there
    assert "secret-123" not in str(caught.value)
