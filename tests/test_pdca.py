"""PDCA report: fired / shown / shadow / feedback per rule version, and the review list."""

from __future__ import annotations

import uuid

import builders
from click.testing import CliRunner
from shared import bundled_content
from sqlalchemy import func, insert, select

from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.pdca import collect, render_html, render_markdown, review
from cds_service.audit.record import DecisionRecord
from cds_service.audit.storage import feedback, init_schema, make_engine, rule_outcomes
from cds_service.cli import main

DUPLICATE_VERSION = bundled_content().rulebook.by_id("duplicate-ingredient").version


def _record(rule_id: str, version: str, status: str, fired: bool) -> DecisionRecord:
    """A decision that evaluated one rule, as the pipeline records it (a card when an active rule fires)."""
    card = str(uuid.uuid4())
    shown = fired and status == "active"
    entry = {"id": rule_id, "version": version, "status": status, "findings": int(fired)}
    entry["outcome"] = "fired" if fired else "not-fired"
    if shown:
        entry["cards"] = [card]
    return DecisionRecord(
        {
            "id": str(uuid.uuid4()),
            "recordedAt": "2026-11-01T00:00:00.000000Z",
            "service": {"id": "s"},
            "hook": "order-sign",
            "hookInstance": str(uuid.uuid4()),
            "client": {"id": None, "authenticated": False},
            "data": [],
            "rules": [entry],
            "llm": None,
            "response": {"status": 200, "cards": [{"uuid": card, "indicator": "warning"}] if shown else []},
            "timingsMs": {"total": 1.0},
        }
    )


def _seed(
    engine, rule_id, version, status, fired, evaluated, accepted=0, overridden=0, reason="risk-benefit-ratio"
):
    log = DecisionLog(engine, group_commit=False)
    for i in range(evaluated):
        log.append(_record(rule_id, version, status, fired=i < fired))
    with engine.begin() as conn:
        for i in range(accepted + overridden):
            outcome = "accepted" if i < accepted else "overridden"
            conn.execute(
                insert(feedback).values(
                    dedupe_key=uuid.uuid4().hex,
                    service_id="s",
                    card_uuid=str(uuid.uuid4()),
                    outcome=outcome,
                    override_code=None if outcome == "accepted" else reason,
                    override_display=None
                    if outcome == "accepted"
                    else "Recipient assessment of risk/benefit ratio",
                    outcome_timestamp="2026-11-01T00:00:00Z",
                    received_at="2026-11-01T00:00:00Z",
                    rule_id=rule_id,
                    rule_version=version,
                )
            )


def test_counts_rates_and_review_list(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    init_schema(engine)
    _seed(engine, "noisy", "1.0.0", "active", fired=30, evaluated=40, accepted=3, overridden=27)
    _seed(engine, "fine", "2.1.0", "active", fired=10, evaluated=50, accepted=9, overridden=1)
    _seed(engine, "trial", "0.1.0", "shadow", fired=15, evaluated=30)
    stats = {s.rule_id: s for s in collect(engine)}
    assert (stats["noisy"].fired, stats["noisy"].shown, stats["noisy"].overridden) == (30, 30, 27)
    # evaluations come from each decision's rule set; only outcomes other than not-fired have rows
    assert [stats[r].evaluated for r in ("noisy", "fine", "trial")] == [40, 50, 30]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(rule_outcomes)).scalar_one() == 30 + 10 + 15
    assert stats["fine"].acceptance_rate == 0.9
    assert stats["trial"].shadow_fired == 15 and stats["trial"].shown == 0
    flagged = {(i.rule_id, i.action.split(":")[0]) for i in review(list(stats.values()))}
    assert ("noisy", "tune the condition or text, shadow it, or retire it") in flagged
    assert any(rule == "trial" for rule, _ in flagged)
    assert not any(rule == "fine" for rule, _ in flagged)
    md = render_markdown(list(stats.values()), review(list(stats.values())), "t")
    assert "| noisy | 1.0.0 | active | 40 | 30 | 30 | 0 | 3 | 27 | 10% |" in md
    html = render_html(list(stats.values()), [], "t")
    assert html.startswith("<!doctype html>") and "data:image/png;base64,iVBOR" in html


def test_report_command_after_real_calls_and_feedback(tmp_path, monkeypatch, make_app):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path / "data"))
    app = make_app(CDS_DATA_DIR=str(tmp_path / "data"))
    client = app.test_client()
    body = builders.order_sign(
        {
            "medications": ["Acetaminophen 325 MG Oral Tablet"],
            "draftOrders": ["Acetaminophen 500 MG Oral Tablet"],
        }
    )
    card = client.post("/cds-services/medication-order-check", json=body).get_json()["cards"][0]
    client.post(
        "/cds-services/medication-order-check/feedback",
        json={
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-11-26T10:00:00Z",
                    "overrideReason": {"reason": card["overrideReasons"][0]},
                }
            ]
        },
    )
    result = CliRunner().invoke(main, ["pdca", "report", "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("| duplicate-ingredient |"))
    assert "| 1 | 1 | 0 | 0 | 1 | 0% |" in row
    out = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["pdca", "report", "--format", "html", "-o", str(out)]).exit_code == 0
    assert "<img" in out.read_text()
    assert CliRunner().invoke(main, ["pdca", "report", "--since", "yesterday"]).exit_code != 0


def test_rules_commands():
    runner = CliRunner()
    lint = runner.invoke(main, ["rules", "lint"])
    assert lint.exit_code == 0 and lint.output.startswith("ok:")
    test = runner.invoke(main, ["rules", "test", "duplicate-ingredient"])
    assert test.exit_code == 0 and "0 failed" in test.output


SERVICE = "medication-order-check"


def _issue_card(client) -> dict:
    body = builders.order_sign(
        {
            "medications": ["Acetaminophen 325 MG Oral Tablet"],
            "draftOrders": ["Acetaminophen 500 MG Oral Tablet"],
        }
    )
    return client.post(f"/cds-services/{SERVICE}", json=body).get_json()["cards"][0]


def _send(client, *entries: dict) -> None:
    response = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": list(entries)})
    assert response.status_code == 200, response.get_json()


def _accepted(card: dict, at: str) -> dict:
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": at,
    }


def _overridden(card: dict, at: str, reason: dict | None = None) -> dict:
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": at,
        "overrideReason": {"reason": reason} if reason else {"userComment": "intended"},
    }


def _report(monkeypatch, app, *args: str) -> str:
    monkeypatch.setenv("CDS_DATA_DIR", str(app.extensions["cds_runtime"].settings.data_dir))
    result = CliRunner().invoke(main, ["pdca", "report", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _row(report: str, rule_id: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(f"| {rule_id} |"))


def test_code_only_override_reason_is_shown_with_the_display_the_card_offered(app, monkeypatch):
    # The CDS Hooks Sandbox sends only the code of the reason picked from card.overrideReasons.
    client = app.test_client()
    card, other = _issue_card(client), _issue_card(client)
    offered = card["overrideReasons"][1]
    _send(client, _overridden(card, "2026-11-26T10:00:00Z", {"code": offered["code"]}))
    _send(client, _overridden(other, "2026-11-26T10:00:00Z", {"code": "not-offered"}))
    reasons = _row(_report(monkeypatch, app), "duplicate-ingredient").split(" | ")[-1]
    assert f"{offered['display']} (1)" in reasons and offered["code"] not in reasons
    assert "not-offered (not among the reasons the card offered) (1)" in reasons


def test_code_only_override_reason_of_a_purged_card_falls_back_to_the_code(app, monkeypatch):
    client = app.test_client()
    card = _issue_card(client)
    code = card["overrideReasons"][0]["code"]
    _send(client, _overridden(card, "2026-11-26T10:00:00Z", {"code": code}))
    assert app.extensions["cds_runtime"].storage.decision_log.purge_before("9999-01-01T00:00:00Z") == 1
    row = _row(_report(monkeypatch, app), "duplicate-ingredient")
    assert f"| {code} (display unknown: the card is no longer in the decision log) (1) |" in row


def test_conflicting_feedback_counts_each_card_once_by_its_latest_outcome(app, monkeypatch, tmp_path):
    client = app.test_client()
    # Card A: accepted at 10:05 but that report arrives first; the override at 10:01 arrives later.
    # Card B: both at the same instant: the later arrival (overridden) counts.
    # Card C: the same override sent twice (a repeat) and a later override: no conflict, one card.
    a, b, c = (_issue_card(client) for _ in range(3))
    _send(client, _accepted(a, "2026-11-26T10:05:00Z"))
    _send(client, _overridden(a, "2026-11-26T12:01:00+02:00"))
    _send(client, _accepted(b, "2026-11-26T10:00:00Z"), _overridden(b, "2026-11-26T10:00:00Z"))
    _send(client, _overridden(c, "2026-11-26T10:00:00Z"), _overridden(c, "2026-11-26T10:00:00Z"))
    _send(client, _overridden(c, "2026-11-26T10:02:00Z"))
    report = _report(monkeypatch, app)
    # accepted 1 (A), overridden 2 (B, C): three cards, not five feedback records
    assert "| 0 | 1 | 2 | 33% |" in _row(report, "duplicate-ingredient")
    conflicts = report.split("## Conflicting feedback", 1)[1]
    assert (
        f"- **duplicate-ingredient@{DUPLICATE_VERSION}** card `{a['uuid']}`: "
        "overridden (2026-11-26T12:01:00+02:00) → accepted (2026-11-26T10:05:00Z)"
    ) in conflicts
    assert (
        f"- **duplicate-ingredient@{DUPLICATE_VERSION}** card `{b['uuid']}`: accepted (2026-11-26T10:00:00Z) "
        "→ overridden (2026-11-26T10:00:00Z)"
    ) in conflicts
    assert c["uuid"] not in conflicts
    out = tmp_path / "r.html"
    _report(monkeypatch, app, "--format", "html", "-o", str(out))
    page = out.read_text()
    assert "<h2>Conflicting feedback</h2>" in page and a["uuid"] in page and c["uuid"] not in page
