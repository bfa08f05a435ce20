"""Feedback: the spec payload, stored durably and idempotently, linked to rule and version."""

from __future__ import annotations

import uuid

import builders
from shared import bundled_content
from sqlalchemy import select

from cds_service.audit.storage import feedback

SERVICE = "medication-order-check"

DUPLICATE_VERSION = bundled_content().rulebook.by_id("duplicate-ingredient").version


def _card(client):
    body = builders.order_sign(
        {
            "medications": ["Acetaminophen 325 MG Oral Tablet"],
            "draftOrders": ["Acetaminophen 500 MG Oral Tablet"],
        }
    )
    return client.post(f"/cds-services/{SERVICE}", json=body).get_json()["cards"][0]


def _rows(app):
    with app.extensions["cds_runtime"].storage.feedback.engine.connect() as conn:
        return conn.execute(select(feedback)).mappings().all()


def test_accepted_and_overridden_are_stored_with_rule_and_version(app):
    client = app.test_client()
    card = _card(client)
    payload = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
            },
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:05:00.52Z",
                "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "intended"},
            },
        ]
    }
    response = client.post(f"/cds-services/{SERVICE}/feedback", json=payload)
    assert response.status_code == 200 and response.get_json() == {"received": 2, "recorded": 2}
    rows = _rows(app)
    assert {r["outcome"] for r in rows} == {"accepted", "overridden"}
    assert {(r["rule_id"], r["rule_version"]) for r in rows} == {("duplicate-ingredient", DUPLICATE_VERSION)}
    overridden = next(r for r in rows if r["outcome"] == "overridden")
    assert (
        overridden["override_code"] == card["overrideReasons"][0]["code"]
        and overridden["user_comment"] == "intended"
    )


def test_same_report_twice_is_one_record(app):
    client = app.test_client()
    card = _card(client)
    payload = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "overrideReason": {"userComment": "n/a"},
            }
        ]
    }
    first = client.post(f"/cds-services/{SERVICE}/feedback", json=payload).get_json()
    again = client.post(f"/cds-services/{SERVICE}/feedback", json=payload).get_json()
    assert first == {"received": 1, "recorded": 1} and again == {"received": 1, "recorded": 0}
    assert len(_rows(app)) == 1


def test_feedback_is_a_hash_chain_that_verify_checks(app):
    client = app.test_client()
    card = _card(client)
    for minute in range(3):
        entry = {
            "card": card["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": f"2026-11-26T10:0{minute}:00Z",
            "overrideReason": {"userComment": "n/a"},
        }
        client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [entry, entry]})  # one is a repeat
    rows = sorted(_rows(app), key=lambda r: r["seq"])
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert rows[0]["prev_hash"] == "0" * 64 and rows[1]["prev_hash"] == rows[0]["hash"]
    log = app.extensions["cds_runtime"].storage.decision_log
    report = log.verify()
    assert report.ok and report.counts["feedback"] == 3 and report.heads["feedback"].startswith("feedback:3:")
    with log.engine.begin() as conn:
        conn.execute(
            feedback.update().where(feedback.c.seq == 2).values(outcome_timestamp="2026-01-01T00:00:00Z")
        )
    broken = log.verify()
    assert not broken.ok and str(broken.problems[0]).startswith("feedback seq 2 ")


def test_urn_uuid_prefix_is_the_same_card(app):
    client = app.test_client()
    card = _card(client)
    for prefix in ("", "urn:uuid:"):
        client.post(
            f"/cds-services/{SERVICE}/feedback",
            json={
                "feedback": [
                    {
                        "card": prefix + card["uuid"],
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-26T10:00:00Z",
                        "overrideReason": {"userComment": "x"},
                    }
                ]
            },
        )
    assert len(_rows(app)) == 1


def test_unknown_card_is_kept_unlinked(app):
    client = app.test_client()
    payload = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "overrideReason": {"userComment": "x"},
            }
        ]
    }
    assert client.post(f"/cds-services/{SERVICE}/feedback", json=payload).status_code == 200
    assert _rows(app)[0]["rule_id"] is None


def test_card_of_another_service_is_refused(app):
    client = app.test_client()
    card = _card(client)
    payload = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "overrideReason": {"userComment": "x"},
            }
        ]
    }
    response = client.post("/cds-services/patient-chart-review/feedback", json=payload)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["feedback[0].card"]


def test_spec_invariants_are_enforced(client):
    cases = [
        (
            {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2026-11-26T10:00:00Z"},
            "feedback[0].acceptedSuggestions",
        ),
        (
            {"card": str(uuid.uuid4()), "outcome": "ignored", "outcomeTimestamp": "2026-11-26T10:00:00Z"},
            "feedback[0].outcome",
        ),
        (
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:00:00",
                "overrideReason": {"userComment": "x"},
            },
            "feedback[0].outcomeTimestamp",
        ),
        (
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "overrideReason": {},
            },
            "feedback[0].overrideReason",
        ),
        (
            {"card": "nope", "outcome": "overridden", "outcomeTimestamp": "2026-11-26T10:00:00Z"},
            "feedback[0].card",
        ),
    ]
    for entry, field in cases:
        response = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [entry]})
        assert response.status_code == 400, entry
        assert field in [e for i in response.get_json()["issue"] for e in i["expression"]], (
            response.get_json()
        )
