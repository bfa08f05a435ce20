"""Auditor queries over the decision log: by patient, user, service, rule (decisions in which it fired),
request id (from a log line to its decision), time range and highest card indicator; whole records,
in chain order.

Nothing is cut silently: `stream` reads every matching record in batches by seq (constant memory) and,
when a limit stops it early, says how many more match; `page` answers one page and the seq to continue
after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ..indicators import INDICATORS
from .storage import decisions, rule_outcomes

BATCH = 500  # records read per query while streaming


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
    request_id: str | None = None  # the call's X-Request-Id, as in the service's log lines
    since: str | None = None  # ISO date or datetime, inclusive
    until: str | None = None  # exclusive
    indicator: str | None = None  # highest indicator among the cards shown
    limit: int | None = None  # at most this many records (None: all that match)
    after: int | None = None  # continue after this seq (the continuation a cut result gives)

    def validate(self, max_limit: int | None = None) -> "DecisionFilter":
        for name in ("since", "until"):
            value = getattr(self, name)
            if value:
                try:
                    datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError as exc:
                    raise FilterError(name, f"not an ISO 8601 date/time: {value!r}") from exc
        if self.indicator and self.indicator not in INDICATORS:
            raise FilterError("indicator", f"one of {', '.join(INDICATORS)}")
        if self.limit is not None and not 1 <= self.limit <= (max_limit or self.limit):
            raise FilterError("limit", f"1..{max_limit}" if max_limit else ">= 1")
        if self.after is not None and self.after < 0:
            raise FilterError("after", ">= 0 (a seq)")
        return self


def _statement(f: DecisionFilter, columns=(decisions,)):
    stmt = select(*columns)
    if f.after is not None:
        stmt = stmt.where(decisions.c.seq > f.after)
    if f.patient:
        stmt = stmt.where(
            decisions.c.patient_ref == (f.patient if "/" in f.patient else f"Patient/{f.patient}")
        )
    if f.user:
        stmt = stmt.where(decisions.c.user_ref == f.user)
    if f.request_id:
        stmt = stmt.where(decisions.c.request_id == f.request_id)
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
    return stmt


def _record(row) -> dict:
    return dict(json.loads(row["record"]), hash=row["hash"])


class Stream:
    """Every record matching the filter as of the moment it was opened, in chain order, read in batches.
    After iterating: `written`, `last_seq`, and `remaining()` (what a limit left out)."""

    def __init__(self, engine: Engine, f: DecisionFilter, batch: int = BATCH):
        self.engine, self.filter, self.batch = engine, f.validate(), batch
        with engine.connect() as conn:  # records appended while streaming are left for the next export
            self.upto = conn.execute(select(func.max(decisions.c.seq))).scalar_one() or 0
        self.written = 0
        self.last_seq: int | None = None

    def __iter__(self) -> Iterator[dict]:
        f, after = self.filter, self.filter.after
        while f.limit is None or self.written < f.limit:
            size = self.batch if f.limit is None else min(self.batch, f.limit - self.written)
            stmt = (
                _statement(replace(f, after=after))
                .where(decisions.c.seq <= self.upto)
                .order_by(decisions.c.seq)
                .limit(size)
            )
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).mappings().all()
            for row in rows:
                self.written += 1
                self.last_seq = after = row["seq"]
                yield _record(row)
            if len(rows) < size:
                return

    def remaining(self) -> int:
        """Matching records after the last one written (0 when the stream ran to the end)."""
        f = replace(self.filter, after=self.last_seq if self.last_seq is not None else self.filter.after)
        stmt = _statement(f, (func.count(),)).where(decisions.c.seq <= self.upto)
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()


@dataclass(frozen=True)
class Page:
    records: list[dict]
    more: bool  # more records match after this page
    next_after: int | None  # pass as `after` to continue


def page(engine: Engine, f: DecisionFilter, max_limit: int = 1000) -> Page:
    """One page of at most `f.limit` records (default 100), and whether more match."""
    f = replace(f, limit=f.limit or 100).validate(max_limit)
    stmt = _statement(f).order_by(decisions.c.seq).limit(f.limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    more = len(rows) > f.limit
    rows = rows[: f.limit]
    return Page([_record(r) for r in rows], more, rows[-1]["seq"] if more else None)


def query(engine: Engine, f: DecisionFilter) -> list[dict]:
    """Full decision records (as stored, hash-chain fields included): every match unless `f.limit`."""
    return list(Stream(engine, f))


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
