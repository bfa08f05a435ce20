"""The decision log: one record per hook call, appended before the response is sent, hash-chained.

Each record's hash is ``sha256(prev_hash + "\\n" + canonical JSON of the record)``; the record holds
its own id, time and sequence number, so an edit, a deletion or a reordering breaks the chain at the
first affected record. A `chain_head` row (updated in the same transaction) makes truncating the
tail detectable; export the head hash to write-once storage to anchor it outside the database.
Patient data are referenced (resource references, versionId/lastUpdated, content hash), never copied;
access tokens are never part of a record.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine

from .database import chain_anchor, chain_head, cards, decisions, rule_outcomes, write_transaction

GENESIS = "0" * 64
INDICATOR_RANK = {"info": 0, "warning": 1, "critical": 2}


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_hash(prev_hash: str, record_json: str) -> str:
    return hashlib.sha256((prev_hash + "\n" + record_json).encode("utf-8")).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Appended:
    id: str
    seq: int
    hash: str


@dataclass(frozen=True)
class CardIndex:
    card_uuid: str
    rule_id: str
    rule_version: str
    indicator: str


@dataclass(frozen=True)
class RuleOutcome:
    rule_id: str
    rule_version: str
    rule_status: str
    outcome: str
    cards_shown: int


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    first_bad_id: str | None = None
    problem: str | None = None
    head_hash: str | None = None


def _columns_from(record: dict) -> dict:
    """The indexed columns, derived from the record (verify re-derives and compares them)."""
    cards_out = record.get("response", {}).get("cards") or []
    ranks = [INDICATOR_RANK.get(c.get("indicator"), -1) for c in cards_out]
    max_indicator = max(ranks) if ranks else -1
    return {
        "id": record["id"], "recorded_at": record["recordedAt"], "service_id": record["service"]["id"],
        "hook": record["hook"], "hook_instance": record["hookInstance"], "status": record["response"]["status"],
        "patient_ref": record.get("patient"), "user_ref": record.get("user"),
        "client_id": (record.get("client") or {}).get("id"),
        "max_indicator": {v: k for k, v in INDICATOR_RANK.items()}.get(max_indicator),
    }


class DecisionLog:
    def __init__(self, engine: Engine):
        self.engine = engine

    @staticmethod
    def new_record_id() -> str:
        return str(uuid.uuid4())

    def append(self, record: dict, card_index: Iterable[CardIndex] = (),
               outcomes: Iterable[RuleOutcome] = ()) -> Appended:
        """Append under the write lock. `record` must carry id, recordedAt, service, hook, hookInstance,
        response.status (see hook_call.py); `seq` and `prevHash` are filled in here."""
        card_index, outcomes = list(card_index), list(outcomes)
        with write_transaction(self.engine) as conn:
            head = conn.execute(select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1)).first()
            if head is None:
                last = conn.execute(select(decisions.c.seq, decisions.c.hash).order_by(decisions.c.seq.desc())
                                    .limit(1)).first()
                anchor = conn.execute(select(chain_anchor.c.hash).order_by(chain_anchor.c.id.desc()).limit(1)).first()
                prev_hash = last.hash if last else (anchor.hash if anchor else GENESIS)
                prev_seq = last.seq if last else 0
            else:
                prev_seq, prev_hash = head.seq, head.hash
            seq = prev_seq + 1
            record = dict(record, seq=seq, prevHash=prev_hash)
            body = canonical(record)
            digest = chain_hash(prev_hash, body)
            conn.execute(insert(decisions).values(seq=seq, record=body, prev_hash=prev_hash, hash=digest,
                                                  **_columns_from(record)))
            if head is None:
                conn.execute(insert(chain_head).values(id=1, seq=seq, hash=digest))
            else:
                conn.execute(update(chain_head).where(chain_head.c.id == 1).values(seq=seq, hash=digest))
            issued_at = record["recordedAt"]
            if card_index:
                conn.execute(insert(cards), [
                    {"card_uuid": c.card_uuid, "decision_id": record["id"], "service_id": record["service"]["id"],
                     "rule_id": c.rule_id, "rule_version": c.rule_version, "indicator": c.indicator,
                     "issued_at": issued_at} for c in card_index])
            if outcomes:
                conn.execute(insert(rule_outcomes), [
                    {"decision_id": record["id"], "recorded_at": issued_at, "rule_id": o.rule_id,
                     "rule_version": o.rule_version, "rule_status": o.rule_status, "outcome": o.outcome,
                     "cards_shown": o.cards_shown} for o in outcomes])
        return Appended(record["id"], seq, digest)

    def verify(self, batch: int = 1000) -> VerifyReport:
        """Walk the whole chain in order; name the first record that does not hold."""
        with self.engine.connect() as conn:
            anchor = conn.execute(select(chain_anchor.c.after_seq, chain_anchor.c.hash)
                                  .order_by(chain_anchor.c.id.desc()).limit(1)).first()
            head = conn.execute(select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1)).first()
            expected_prev = anchor.hash if anchor else GENESIS
            expected_seq = (anchor.after_seq if anchor else 0) + 1
            checked = 0
            last_seq, last_hash = (anchor.after_seq, anchor.hash) if anchor else (None, None)
            after = expected_seq - 1
            while True:
                rows = conn.execute(select(decisions).where(decisions.c.seq > after).order_by(decisions.c.seq)
                                    .limit(batch)).mappings().all()
                if not rows:
                    break
                for row in rows:
                    problem = self._check_row(row, expected_prev, expected_seq)
                    if problem:
                        return VerifyReport(False, checked, row["seq"], row["id"], problem)
                    checked += 1
                    expected_prev, expected_seq = row["hash"], row["seq"] + 1
                    last_seq, last_hash = row["seq"], row["hash"]
                after = rows[-1]["seq"]
            if head is not None and (head.seq != last_seq or head.hash != last_hash):
                return VerifyReport(False, checked, (last_seq or 0) + 1, None,
                                    f"chain head says seq {head.seq} but the last record is seq {last_seq}: "
                                    "records after it were deleted, or the head was altered")
            if head is None and checked:
                return VerifyReport(False, checked, last_seq, None, "chain head row is missing")
        return VerifyReport(True, checked, head_hash=last_hash)

    @staticmethod
    def _check_row(row, expected_prev: str, expected_seq: int) -> str | None:
        if row["seq"] != expected_seq:
            return f"expected seq {expected_seq}, found {row['seq']} (a record is missing or reordered)"
        if row["prev_hash"] != expected_prev:
            return "prev_hash does not match the previous record's hash (deleted, inserted or reordered)"
        try:
            record = json.loads(row["record"])
        except ValueError:
            return "record is not valid JSON"
        if record.get("seq") != row["seq"] or record.get("prevHash") != row["prev_hash"]:
            return "record's own seq/prevHash differ from the row"
        if chain_hash(row["prev_hash"], canonical(record)) != row["hash"] or canonical(record) != row["record"]:
            return "hash does not match the record content (edited)"
        derived = _columns_from(record)
        for key, value in derived.items():
            if row[key] != value:
                return f"column {key} differs from the record (edited)"
        return None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(decisions)).scalar_one()

    def get(self, record_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(decisions.c.record).where(decisions.c.id == record_id)).first()
        return json.loads(row.record) if row else None

    def purge_before(self, cutoff_iso: str) -> int:
        """Delete records older than the cutoff (retention). The hash of the last deleted record becomes
        the anchor the remaining chain is verified from."""
        with write_transaction(self.engine) as conn:
            last = conn.execute(select(decisions.c.seq, decisions.c.hash, decisions.c.id)
                                .where(decisions.c.recorded_at < cutoff_iso)
                                .order_by(decisions.c.seq.desc()).limit(1)).first()
            if last is None:
                return 0
            ids = select(decisions.c.id).where(decisions.c.seq <= last.seq)
            conn.execute(delete(cards).where(cards.c.decision_id.in_(ids)))
            conn.execute(delete(rule_outcomes).where(rule_outcomes.c.decision_id.in_(ids)))
            n = conn.execute(delete(decisions).where(decisions.c.seq <= last.seq)).rowcount
            conn.execute(insert(chain_anchor).values(after_seq=last.seq, hash=last.hash, purged_at=utc_now(),
                                                     purged_count=n))
        return n
