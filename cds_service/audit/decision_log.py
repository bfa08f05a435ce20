"""The decision log: one record per hook call, appended before the response is sent, hash-chained.

Each record (audit/record.py) is hashed as ``sha256(prev_hash + "\\n" + canonical JSON)``; the record holds
its own id, time and sequence number, so an edit, a deletion or a reordering breaks the chain at the
first affected record. A `chain_head` row (updated in the same transaction) makes truncating the
tail detectable; export the head hash to write-once storage to anchor it outside the database.
Patient data are referenced (resource references, versionId/lastUpdated, content hash), never copied;
access tokens are never part of a record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine

from ..canonical import canonical_json, sha256_hex, utc_now
from .record import DecisionRecord
from .storage import cards, chain_anchor, chain_head, decisions, rule_outcomes, write_transaction

GENESIS = "0" * 64


def chain_hash(prev_hash: str, record_json: str) -> str:
    return sha256_hex(prev_hash + "\n" + record_json)


@dataclass(frozen=True)
class Appended:
    id: str
    seq: int
    hash: str


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    first_bad_id: str | None = None
    problem: str | None = None
    head_hash: str | None = None


class DecisionLog:
    def __init__(self, engine: Engine):
        self.engine = engine

    def append(self, record: DecisionRecord) -> Appended:
        """Append under the write lock: `seq` and `prevHash` are set on the record here, then the record
        and every index row derived from it are written in one transaction."""
        with write_transaction(self.engine) as conn:
            head = conn.execute(
                select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1)
            ).first()
            if head is None:
                last = conn.execute(
                    select(decisions.c.seq, decisions.c.hash).order_by(decisions.c.seq.desc()).limit(1)
                ).first()
                anchor = conn.execute(
                    select(chain_anchor.c.hash).order_by(chain_anchor.c.id.desc()).limit(1)
                ).first()
                prev_hash = last.hash if last else (anchor.hash if anchor else GENESIS)
                prev_seq = last.seq if last else 0
            else:
                prev_seq, prev_hash = head.seq, head.hash
            seq = prev_seq + 1
            record.data.update(seq=seq, prevHash=prev_hash)
            body = canonical_json(record.data)
            digest = chain_hash(prev_hash, body)
            conn.execute(
                insert(decisions).values(
                    seq=seq, record=body, prev_hash=prev_hash, hash=digest, **record.columns()
                )
            )
            if head is None:
                conn.execute(insert(chain_head).values(id=1, seq=seq, hash=digest))
            else:
                conn.execute(update(chain_head).where(chain_head.c.id == 1).values(seq=seq, hash=digest))
            card_rows, outcome_rows = record.card_rows(), record.outcome_rows()
            if card_rows:
                conn.execute(insert(cards), card_rows)
            if outcome_rows:
                conn.execute(insert(rule_outcomes), outcome_rows)
        return Appended(record.id, seq, digest)

    def verify(self, batch: int = 1000) -> VerifyReport:
        """Walk the whole chain in order; name the first record that does not hold."""
        with self.engine.connect() as conn:
            anchor = conn.execute(
                select(chain_anchor.c.after_seq, chain_anchor.c.hash)
                .order_by(chain_anchor.c.id.desc())
                .limit(1)
            ).first()
            head = conn.execute(
                select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1)
            ).first()
            expected_prev = anchor.hash if anchor else GENESIS
            expected_seq = (anchor.after_seq if anchor else 0) + 1
            checked = 0
            last_seq, last_hash = (anchor.after_seq, anchor.hash) if anchor else (None, None)
            after = expected_seq - 1
            while True:
                rows = (
                    conn.execute(
                        select(decisions)
                        .where(decisions.c.seq > after)
                        .order_by(decisions.c.seq)
                        .limit(batch)
                    )
                    .mappings()
                    .all()
                )
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
                return VerifyReport(
                    False,
                    checked,
                    (last_seq or 0) + 1,
                    None,
                    f"chain head says seq {head.seq} but the last record is seq {last_seq}: "
                    "records after it were deleted, or the head was altered",
                )
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
        if (
            chain_hash(row["prev_hash"], canonical_json(record)) != row["hash"]
            or canonical_json(record) != row["record"]
        ):
            return "hash does not match the record content (edited)"
        derived = DecisionRecord(record).columns()
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
            last = conn.execute(
                select(decisions.c.seq, decisions.c.hash, decisions.c.id)
                .where(decisions.c.recorded_at < cutoff_iso)
                .order_by(decisions.c.seq.desc())
                .limit(1)
            ).first()
            if last is None:
                return 0
            ids = select(decisions.c.id).where(decisions.c.seq <= last.seq)
            conn.execute(delete(cards).where(cards.c.decision_id.in_(ids)))
            conn.execute(delete(rule_outcomes).where(rule_outcomes.c.decision_id.in_(ids)))
            n = conn.execute(delete(decisions).where(decisions.c.seq <= last.seq)).rowcount
            conn.execute(
                insert(chain_anchor).values(
                    after_seq=last.seq, hash=last.hash, purged_at=utc_now(), purged_count=n
                )
            )
        return n
