"""Audit integrity: `audit verify` covers every table the audit API, the PDCA report and the cards read
(decisions, cards, rule_outcomes, feedback, llm_outputs), on SQLite and PostgreSQL; cached LLM text is
re-checked before it is served; a head kept outside the database catches a rewritten chain; export and
query never cut a result silently."""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import uuid
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, insert, select, update

from cds_service.audit import query as query_module
from cds_service.audit.auditors import create_token
from cds_service.audit.chain import FEEDBACK_CHAIN, ExpectedHead
from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.feedback import FeedbackStore
from cds_service.audit.record import DecisionRecord
from cds_service.audit.retention import purge
from cds_service.audit.storage import (
    cards,
    chain_head,
    decisions,
    feedback,
    init_schema,
    llm_outputs,
    make_engine,
    rule_outcomes,
    rule_sets,
)
from cds_service.cli import main
from cds_service.reasoning.cache import LlmStore, Stored

SERVICE = "svc"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        init_schema(engine)
        yield engine
        engine.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    init_schema(engine)
    yield engine
    engine.dispose()


def _record(i: int, when: str | None = None) -> DecisionRecord:
    card = str(uuid.uuid4())
    return DecisionRecord(
        {
            "id": str(uuid.uuid4()),
            "recordedAt": when or f"2026-11-26T10:{i // 60 % 60:02d}:{i % 60:02d}.000000Z",
            "service": {"id": SERVICE},
            "hook": "order-sign",
            "hookInstance": str(uuid.uuid4()),
            "patient": f"Patient/p{i % 7}",
            "user": "Practitioner/u",
            "client": {"id": None, "authenticated": False},
            "data": [],
            "rules": [
                {
                    "id": "ddi-a",
                    "version": "1.0.0",
                    "status": "active",
                    "outcome": "fired",
                    "findings": 1,
                    "cards": [card],
                },
                {"id": "dup", "version": "1.0.0", "status": "active", "outcome": "not-fired", "findings": 0},
            ],
            "llm": None,
            "response": {"status": 200, "cards": [{"uuid": card, "indicator": "critical", "summary": "x"}]},
            "timingsMs": {"total": 1.0},
        }
    )


def _feedback_entry(card: str, minute: int) -> dict:
    return {
        "card": card,
        "outcome": "overridden",
        "outcomeTimestamp": datetime(2026, 11, 26, 10, minute, tzinfo=UTC),
        "overrideReason": {
            "reason": {"system": "urn:x", "code": "r1", "display": "Reason"},
            "userComment": "c",
        },
    }


def _populate(engine, n: int = 4) -> dict:
    """n decisions (one card and two rule outcomes each), one feedback per card, three cached LLM texts."""
    log = DecisionLog(engine)
    records = [_record(i) for i in range(n)]
    for r in records:
        log.append(r)
    card_ids = [r.data["response"]["cards"][0]["uuid"] for r in records]
    fb = FeedbackStore(engine)
    for i, card in enumerate(card_ids):
        assert fb.record(SERVICE, [_feedback_entry(card, i)]).recorded == 1
    store = LlmStore(engine)
    keys = [f"{i:064x}" for i in range(1, 4)]
    for i, key in enumerate(keys):
        store.put(key, "m@int8", "explanation", Stored(f"text {i}", True, [], 10 + i))
    return {"log": log, "decisions": [r.id for r in records], "cards": card_ids, "llm": keys}


def _outcome_id(conn, decision_id: str, rule_id: str) -> int:
    return conn.execute(
        select(rule_outcomes.c.id).where(
            rule_outcomes.c.decision_id == decision_id, rule_outcomes.c.rule_id == rule_id
        )
    ).scalar_one()


def _forge_outcome(conn, decision_id: str, rule_id: str, outcome: str) -> int:
    conn.execute(
        insert(rule_outcomes).values(
            decision_id=decision_id,
            recorded_at="2026-11-26T10:00:00.000000Z",
            rule_id=rule_id,
            rule_version="1.0.0",
            rule_status="active",
            outcome=outcome,
            cards_shown=0,
        )
    )
    return _outcome_id(conn, decision_id, rule_id)


def _tamper(conn, case: str, ctx: dict) -> tuple[str, str]:
    """Change the database as an attacker would; return (table, text naming the row) verify must report."""
    d, c, k = ctx["decisions"], ctx["cards"], ctx["llm"]
    if case == "decisions-edit":
        row = conn.execute(select(decisions.c.record).where(decisions.c.seq == 2)).scalar_one()
        record = json.loads(row)
        record["response"]["status"] = 500
        conn.execute(update(decisions).where(decisions.c.seq == 2).values(record=json.dumps(record)))
        return "decisions", "seq 2"
    if case == "decisions-delete":
        conn.execute(delete(decisions).where(decisions.c.seq == 2))
        return "decisions", "seq 3"
    if case == "cards-edit":
        conn.execute(update(cards).where(cards.c.card_uuid == c[1]).values(indicator="info"))
        return "cards", f"card_uuid {c[1]}"
    if case == "cards-insert":
        forged = str(uuid.uuid4())
        conn.execute(
            insert(cards).values(
                card_uuid=forged,
                decision_id=d[0],
                service_id=SERVICE,
                rule_id="ddi-a",
                rule_version="1.0.0",
                indicator="info",
                issued_at="2026-11-26T10:00:00.000000Z",
            )
        )
        return "cards", f"card_uuid {forged}"
    if case == "cards-delete":
        conn.execute(delete(cards).where(cards.c.card_uuid == c[2]))
        return "cards", f"card_uuid {c[2]}"
    if case == "rule_outcomes-edit":
        row_id = _outcome_id(conn, d[1], "ddi-a")
        conn.execute(update(rule_outcomes).where(rule_outcomes.c.id == row_id).values(outcome="not-fired"))
        return "rule_outcomes", f"id {row_id}"
    if case == "rule_outcomes-insert":
        return "rule_outcomes", f"id {_forge_outcome(conn, d[0], 'forged', 'fired')}"
    if case == "rule_outcomes-delete":
        conn.execute(delete(rule_outcomes).where(rule_outcomes.c.id == _outcome_id(conn, d[2], "ddi-a")))
        return "rule_outcomes", f"decision {d[2]}, rule ddi-a"
    if case == "rule_outcomes-insert-not-fired":  # rules that did not fire have no row: one is forged
        return "rule_outcomes", f"id {_forge_outcome(conn, d[1], 'dup', 'not-fired')}"
    set_id = conn.execute(select(decisions.c.rule_set).where(decisions.c.seq == 1)).scalar_one()
    if case == "rule_sets-edit":  # count the evaluations of "dup" under another version
        conn.execute(update(rule_sets).where(rule_sets.c.rule_id == "dup").values(rule_version="9.9.9"))
        return "rule_sets", f"set_id {set_id}"
    if case == "rule_sets-insert":  # claim a rule was evaluated that was not
        conn.execute(
            insert(rule_sets).values(set_id=set_id, rule_id="forged", rule_version="1", rule_status="active")
        )
        return "rule_sets", f"set_id {set_id}"
    if case == "rule_sets-delete":
        conn.execute(delete(rule_sets).where(rule_sets.c.set_id == set_id))
        return "rule_sets", f"set_id {set_id}"
    if case == "decisions-rule_set":  # point a decision at another set of rules
        conn.execute(update(decisions).where(decisions.c.seq == 3).values(rule_set="0" * 64))
        return "decisions", "seq 3"
    if case == "feedback-edit":
        conn.execute(update(feedback).where(feedback.c.seq == 2).values(outcome="accepted"))
        return "feedback", "seq 2"
    if case == "feedback-relink":  # attribute the override to another rule: changes the PDCA report
        conn.execute(update(feedback).where(feedback.c.seq == 1).values(rule_id="dup"))
        return "feedback", "seq 1"
    if case == "feedback-insert":
        values = dict(
            dedupe_key="f" * 64,
            service_id=SERVICE,
            card_uuid=c[0],
            outcome="accepted",
            outcome_timestamp="2026-11-26T11:00:00Z",
            received_at="2026-11-26T11:00:00.000000Z",
        )
        conn.execute(insert(feedback).values(**values))
        row_id = conn.execute(select(feedback.c.id).where(feedback.c.dedupe_key == "f" * 64)).scalar_one()
        return "feedback", f"id {row_id}"
    if case == "feedback-insert-chained":  # correctly chained after the last row, head not updated
        last = conn.execute(select(feedback).order_by(feedback.c.seq.desc()).limit(1)).mappings().one()
        row = {col: last[col] for col in FEEDBACK_CHAIN.columns}
        row.update(dedupe_key="e" * 64, outcome="accepted", seq=last["seq"] + 1, prev_hash=last["hash"])
        conn.execute(insert(feedback).values(**row, hash=FEEDBACK_CHAIN.digest(row)))
        return "feedback", f"seq {last['seq'] + 1}"
    if case == "feedback-delete":
        conn.execute(delete(feedback).where(feedback.c.seq == 2))
        return "feedback", "seq 3"
    if case == "feedback-delete-tail":
        conn.execute(delete(feedback).where(feedback.c.seq == 4))
        return "feedback", "seq 4"
    if case == "llm_outputs-edit":
        conn.execute(update(llm_outputs).where(llm_outputs.c.key == k[1]).values(output="Stop warfarin."))
        return "llm_outputs", f"seq 2 (key {k[1]})"
    if case == "llm_outputs-insert":
        conn.execute(
            insert(llm_outputs).values(
                key="a" * 64,
                model_id="m@int8",
                task="explanation",
                created_at="2026-11-26T10:00:00.000000Z",
                output="forged",
                accepted=1,
                reasons="[]",
            )
        )
        return "llm_outputs", f"key {'a' * 64}"
    if case == "llm_outputs-delete":
        conn.execute(delete(llm_outputs).where(llm_outputs.c.key == k[0]))
        return "llm_outputs", "seq 2"
    raise AssertionError(case)


TAMPERING = [
    "decisions-edit",
    "decisions-delete",
    "cards-edit",
    "cards-insert",
    "cards-delete",
    "rule_outcomes-edit",
    "rule_outcomes-insert",
    "rule_outcomes-delete",
    "rule_outcomes-insert-not-fired",
    "rule_sets-edit",
    "rule_sets-insert",
    "rule_sets-delete",
    "decisions-rule_set",
    "feedback-edit",
    "feedback-relink",
    "feedback-insert",
    "feedback-insert-chained",
    "feedback-delete",
    "feedback-delete-tail",
    "llm_outputs-edit",
    "llm_outputs-insert",
    "llm_outputs-delete",
]


@pytest.mark.parametrize("case", TAMPERING)
def test_verify_names_the_table_and_row_of_every_edit_insertion_and_deletion(engine, case):
    ctx = _populate(engine)
    clean = ctx["log"].verify()
    assert clean.ok, clean.problems
    assert clean.counts == {
        "decisions": 4,
        "cards": 4,
        "rule_outcomes": 4,  # the fired ones: a rule that did not fire is counted through its rule set
        "rule_sets": 1,
        "feedback": 4,
        "llm_outputs": 3,
    }
    with engine.begin() as conn:
        table, row = _tamper(conn, case, ctx)
    report = ctx["log"].verify()
    assert not report.ok
    assert any(p.table == table and row in p.row for p in report.problems), [str(p) for p in report.problems]


def test_an_edited_cached_text_is_not_served_and_is_logged(engine, caplog):
    ctx = _populate(engine)
    store = LlmStore(engine)
    assert store.get(ctx["llm"][1]) == Stored("text 1", True, [], 11)
    with engine.begin() as conn:
        conn.execute(update(llm_outputs).where(llm_outputs.c.key == ctx["llm"][1]).values(accepted=0))
    with caplog.at_level(logging.WARNING, logger="cds_service.reasoning.cache"):
        assert store.get(ctx["llm"][1]) is None
    assert "not served" in caplog.text and ctx["llm"][1] in caplog.text
    assert store.get(ctx["llm"][0]) is not None  # the others still are
    store.put(ctx["llm"][1], "m@int8", "explanation", Stored("again", True, [], 1))  # no second row
    assert store.get(ctx["llm"][1]) is None


def test_a_consistently_rewritten_chain_is_caught_only_by_a_head_kept_elsewhere(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    init_schema(engine)
    ctx = _populate(engine)
    kept = [ExpectedHead.parse(h) for h in ctx["log"].verify().heads.values()]
    assert {h.chain for h in kept} == {"decisions", "feedback", "llm_outputs"}
    ctx["log"].append(_record(9))  # the chain grows: an old head still holds
    assert ctx["log"].verify(expect=kept).ok
    # An attacker with write access rewrites feedback seq 1 and re-hashes every later row and the head.
    with engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(select(feedback).order_by(feedback.c.seq)).mappings()]
        rows[0]["user_comment"] = "rewritten"
        prev = rows[0]["prev_hash"]
        for row in rows:
            row["prev_hash"], row["hash"] = prev, FEEDBACK_CHAIN.digest({**row, "prev_hash": prev})
            prev = row["hash"]
            conn.execute(update(feedback).where(feedback.c.id == row["id"]).values(**row))
        conn.execute(update(chain_head).where(chain_head.c.id == 2).values(hash=prev))
    assert ctx["log"].verify().ok  # undetectable from inside the database ...
    report = ctx["log"].verify(expect=kept)  # ... but not against the head kept outside
    assert (
        not report.ok and report.problems[0].table == "feedback" and "rewritten" in report.problems[0].problem
    )


def test_verify_cli_prints_heads_checks_them_and_names_bad_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    engine = make_engine(f"sqlite:///{tmp_path / 'decision-log.sqlite3'}")
    init_schema(engine)
    ctx = _populate(engine)
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "ok: 4 records verified" in ok.output and "4 feedback, 3 llm_outputs" in ok.output
    heads = ok.output.split("--expect-head): ", 1)[1].split()
    args = [a for h in heads for a in ("--expect-head", h)]
    assert runner.invoke(main, ["audit", "verify", *args]).exit_code == 0
    wrong = heads[0].rsplit(":", 1)[0] + ":" + "0" * 64
    assert runner.invoke(main, ["audit", "verify", "--expect-head", wrong]).exit_code == 1
    assert runner.invoke(main, ["audit", "verify", "--expect-head", "nope"]).exit_code == 2
    with engine.begin() as conn:
        row_id = _outcome_id(conn, ctx["decisions"][0], "ddi-a")
        conn.execute(update(rule_outcomes).where(rule_outcomes.c.id == row_id).values(cards_shown=7))
    broken = runner.invoke(main, ["audit", "verify"])
    assert broken.exit_code == 1 and f"BROKEN rule_outcomes id {row_id}" in broken.output
    assert "cards_shown is 7, the record says 1" in broken.output


def test_purge_keeps_every_chain_verifiable(tmp_path, monkeypatch):
    from cds_service.reasoning import cache

    engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    init_schema(engine)
    log, store = DecisionLog(engine), LlmStore(engine)
    with monkeypatch.context() as m:
        m.setattr(cache, "utc_now", lambda: "2019-01-01T00:00:00.000000Z")
        for i in range(3):
            log.append(_record(i, "2019-01-01T00:00:00.000000Z"))
            store.put(f"{i:064x}", "m", "summary", Stored("t", True, [], 1))
    log.append(_record(5, "2099-01-01T00:00:00.000000Z"))
    store.put("e" * 64, "m", "summary", Stored("t", True, [], 1))
    assert log.verify().ok
    assert purge(log, 365) == 3
    report = log.verify()
    assert report.ok, report.problems
    assert report.counts["decisions"] == 1 and report.counts["llm_outputs"] == 1
    store.put("f" * 64, "m", "summary", Stored("t", True, [], 1))
    assert log.verify().ok and store.get("f" * 64) is not None and store.get("0" * 64) is None


def test_verify_while_the_service_appends_sees_one_consistent_state(engine):
    _populate(engine)
    log, fb, errors = DecisionLog(engine), FeedbackStore(engine), []

    def appender():
        try:
            for i in range(150):
                record = _record(i)
                log.append(record)
                fb.record(SERVICE, [_feedback_entry(record.data["response"]["cards"][0]["uuid"], i % 60)])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    worker = threading.Thread(target=appender)
    worker.start()
    reports = []
    while worker.is_alive():
        reports.append(log.verify())
    worker.join()
    assert not errors and reports
    assert all(r.ok for r in reports), [str(p) for r in reports for p in r.problems][:3]
    assert log.verify().counts["feedback"] == 154


def _append_both(url: str, n: int) -> None:
    engine = make_engine(url)
    log, fb = DecisionLog(engine), FeedbackStore(engine)
    for i in range(n):
        record = _record(i)
        log.append(record)
        fb.record(SERVICE, [_feedback_entry(record.data["response"]["cards"][0]["uuid"], i % 60)])


@pytest.mark.slow
def test_concurrent_feedback_and_decisions_keep_their_chains(engine):
    url = engine.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_both, args=(url, 15)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    report = DecisionLog(engine).verify()
    assert report.ok, report.problems
    assert report.counts["decisions"] == 45 and report.counts["feedback"] == 45


# -- export and query: nothing cut silently ---------------------------------------------------------


def _many(engine, n: int) -> None:
    log = DecisionLog(engine)
    for i in range(n):
        log.append(_record(i))


@pytest.fixture
def big_log(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(query_module, "BATCH", 50)  # several batches per export
    engine = make_engine(f"sqlite:///{tmp_path / 'decision-log.sqlite3'}")
    init_schema(engine)
    _many(engine, 368)
    return engine


def test_export_streams_every_matching_record_and_says_when_a_limit_cut_it(big_log, tmp_path):
    from fhir.resources.R4B.bundle import Bundle

    runner = CliRunner()
    out = tmp_path / "all.json"
    full = runner.invoke(main, ["audit", "export", "--format", "fhir", "-o", str(out)])
    assert full.exit_code == 0 and f"wrote 368 decisions to {out} (all that match)" in full.output
    bundle = json.loads(out.read_text())
    Bundle.model_validate(bundle)
    seqs = [int(e["resource"]["entity"][-1]["detail"][1]["valueString"]) for e in bundle["entry"]]
    assert seqs == list(range(1, 369))

    cut = runner.invoke(main, ["audit", "export", "--format", "fhir", "--limit", "100", "-o", str(out)])
    assert cut.exit_code == 0
    assert (
        f"wrote 100 of 368 matching decisions to {out}; --limit cut the rest (continue with --after 100)"
        in cut.output
    )
    assert len(json.loads(out.read_text())["entry"]) == 100

    lines = tmp_path / "rest.jsonl"
    rest = runner.invoke(main, ["audit", "export", "--format", "jsonl", "--after", "100", "-o", str(lines)])
    assert "wrote 268 decisions" in rest.output
    assert [json.loads(x)["seq"] for x in lines.read_text().splitlines()] == list(range(101, 369))

    one_patient = runner.invoke(
        main, ["audit", "export", "--format", "jsonl", "--patient", "p3", "--limit", "7"]
    )
    assert "wrote 7 of 53 matching decisions; --limit cut the rest" in one_patient.output  # 368 / 7 patients


def test_query_lists_every_match_and_says_when_a_limit_cut_it(big_log):
    runner = CliRunner()
    everything = runner.invoke(main, ["audit", "query"])
    assert everything.exit_code == 0 and everything.output.count(f" {SERVICE} ") == 368
    assert "listed 368 decisions (all that match)" in everything.output
    cut = runner.invoke(main, ["audit", "query", "--limit", "5", "--rule", "ddi-a"])
    assert cut.output.count(f" {SERVICE} ") == 5
    assert "listed 5 of 368 matching decisions; --limit cut the rest (continue with --after 5)" in cut.output


def test_audit_api_pages_with_an_explicit_continuation(make_app, tmp_path, monkeypatch):
    from fhir.resources.R4B.bundle import Bundle

    monkeypatch.setattr(query_module, "BATCH", 40)
    token = create_token(tmp_path / "auditors", "committee")
    app = make_app(CDS_AUDIT_TOKENS=str(tmp_path / "auditors"))
    _many(app.extensions["cds_runtime"].storage.engine, 250)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}

    seen, url, pages = [], "/audit/decisions?limit=100&service=svc", 0
    while url:
        body = client.get(url, headers=auth).get_json()
        pages += 1
        seen += [d["seq"] for d in body["decisions"]]
        assert body["more"] is ("next" in body)
        url = body.get("next")
        if url:
            assert "service=svc" in url and url.endswith(f"after={seen[-1]}")
    assert seen == list(range(1, 251)) and pages == 3
    first = client.get("/audit/decisions?limit=100", headers=auth)
    assert first.headers["Link"] == f'<{first.get_json()["next"]}>; rel="next"'
    assert client.get("/audit/decisions?limit=1001", headers=auth).status_code == 400
    assert client.get("/audit/decisions?after=x", headers=auth).status_code == 400
    assert client.get("/audit/verify?expectHead=x", headers=auth).status_code == 400

    whole = client.get("/audit/export", headers=auth)
    assert whole.mimetype == "application/fhir+json"
    assert len(whole.get_json()["entry"]) == 250 and "link" not in whole.get_json()
    assert "entry" not in client.get("/audit/export?service=none", headers=auth).get_json()  # no empty array
    cut = client.get("/audit/export?limit=100", headers=auth).get_json()
    Bundle.model_validate(cut)
    assert len(cut["entry"]) == 100 and cut["link"][0]["relation"] == "next"
    rest = client.get(cut["link"][0]["url"], headers=auth).get_json()
    assert len(rest["entry"]) == 100 and rest["link"][0]["url"].endswith("after=200")
