"""Auditor queries over the decision log: by patient, user, service, rule (decisions in which it fired),
time range and highest card indicator; whole records, in chain order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine

from ..indicators import INDICATORS
from .storage import decisions, rule_outcomes


class FilterError(ValueError):
    """A bad filter value; `field` names the parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class DecisionFilter:
    patient: str | None = None  # "123" or "Patient/123"
    user: str | None = None  # "Practitioner/abc"
    service: str | None = None
    rule: str | None = None  # decisions in which this rule fired
    since: str | None = None  # ISO date or datetime, inclusive
    until: str | None = None  # exclusive
    indicator: str | None = None  # highest indicator among the cards shown
    limit: int = 100
    offset: int = 0

    def validate(self) -> "DecisionFilter":
        for name in ("since", "until"):
            value = getattr(self, name)
            if value:
                try:
                    datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError as exc:
                    raise FilterError(name, f"not an ISO 8601 date/time: {value!r}") from exc
        if self.indicator and self.indicator not in INDICATORS:
            raise FilterError("indicator", f"one of {', '.join(INDICATORS)}")
        if not 1 <= self.limit <= 10_000:
            raise FilterError("limit", "1..10000")
        if self.offset < 0:
            raise FilterError("offset", ">= 0")
        return self


def _statement(f: DecisionFilter):
    stmt = select(decisions).order_by(decisions.c.seq)
    if f.patient:
        stmt = stmt.where(
            decisions.c.patient_ref == (f.patient if "/" in f.patient else f"Patient/{f.patient}")
        )
    if f.user:
        stmt = stmt.where(decisions.c.user_ref == f.user)
    if f.service:
        stmt = stmt.where(decisions.c.service_id == f.service)
    if f.since:
        stmt = stmt.where(decisions.c.recorded_at >= f.since)
    if f.until:
        stmt = stmt.where(decisions.c.recorded_at < f.until)
    if f.indicator:
        stmt = stmt.where(decisions.c.max_indicator == f.indicator)
    if f.rule:
        fired = select(rule_outcomes.c.decision_id).where(
            rule_outcomes.c.rule_id == f.rule, rule_outcomes.c.outcome == "fired"
        )
        stmt = stmt.where(decisions.c.id.in_(fired))
    return stmt.limit(f.limit).offset(f.offset)


def query(engine: Engine, f: DecisionFilter) -> list[dict]:
    """Full decision records (as stored, hash-chain fields included)."""
    with engine.connect() as conn:
        rows = conn.execute(_statement(f.validate())).mappings().all()
    return [dict(json.loads(r["record"]), hash=r["hash"]) for r in rows]


def summary_row(record: dict) -> dict:
    cards = record.get("response", {}).get("cards") or []
    return {
        "id": record["id"],
        "seq": record["seq"],
        "recordedAt": record["recordedAt"],
        "service": record["service"]["id"],
        "hook": record["hook"],
        "status": record["response"]["status"],
        "patient": record.get("patient"),
        "user": record.get("user"),
        "cards": len(cards),
        "indicators": sorted({c["indicator"] for c in cards}),
        "rulesFired": sorted(r["id"] for r in record.get("rules", []) if r["outcome"] == "fired"),
    }
