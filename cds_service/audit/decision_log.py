"""The decision log: one record per hook call, appended before the response is sent, hash-chained.

Each record (audit/record.py) is hashed as ``sha256(prev_hash + "\\n" + canonical JSON)`` (audit/chain.py);
the record holds its own id, time and sequence number, so an edit, a deletion or a reordering breaks the
chain at the first affected record. A `chain_head` row (updated in the same transaction) makes truncating
the tail detectable; `audit verify` prints the head so it can be kept outside the database. The card
index and rule outcomes are written from the record in the same transaction and re-derived from it by
`verify` (audit/integrity.py). Patient data are referenced (resource references, versionId/lastUpdated,
content hash), never copied; access tokens are never part of a record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Engine

from ..canonical import canonical_json, utc_now
from .chain import DECISIONS, GENESIS, ExpectedHead, advance, chain_hash, current_head
from .integrity import Problem, VerifyReport, verify
from .record import DecisionRecord
from .storage import cards, chain_anchor, decisions, rule_outcomes, write_transaction

__all__ = ["GENESIS", "Appended", "DecisionLog", "Problem", "VerifyReport", "chain_hash"]


@dataclass(frozen=True)
class Appended:
    id: str
    seq: int
    hash: str


class DecisionLog:
    def __init__(self, engine: Engine):
        self.engine = engine

    def append(self, record: DecisionRecord) -> Appended:
        """Append under the write lock: `seq` and `prevHash` are set on the record here, then the record
        and every index row derived from it are written in one transaction."""
        with write_transaction(self.engine) as conn:
            head = current_head(conn, DECISIONS, decisions)
            seq = head.seq + 1
            record.data.update(seq=seq, prevHash=head.hash)
            body = canonical_json(record.data)
            digest = chain_hash(head.hash, body)
            conn.execute(
                insert(decisions).values(
                    seq=seq, record=body, prev_hash=head.hash, hash=digest, **record.columns()
                )
            )
            advance(conn, DECISIONS, head, seq, digest)
            card_rows, outcome_rows = record.card_rows(), record.outcome_rows()
            if card_rows:
                conn.execute(insert(cards), card_rows)
            if outcome_rows:
                conn.execute(insert(rule_outcomes), outcome_rows)
        return Appended(record.id, seq, digest)

    def verify(
        self, batch: int = 1000, max_problems: int = 100, expect: list[ExpectedHead] | None = None
    ) -> VerifyReport:
        """Check every chained and derived table (audit/integrity.py); list each problem by table and row."""
        return verify(self.engine, batch=batch, max_problems=max_problems, expect=expect)

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
                    after_seq=last.seq,
                    hash=last.hash,
                    purged_at=utc_now(),
                    purged_count=n,
                    chain=DECISIONS.name,
                )
            )
        return n
