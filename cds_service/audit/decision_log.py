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

import functools
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.engine import Connection, Engine

from ..canonical import canonical_json, utc_now
from .chain import DECISIONS, GENESIS, ExpectedHead, advance, chain_hash, current_head
from .group_commit import GroupCommitter
from .integrity import Problem, VerifyReport, verify
from .log_writer import WriterClient, WriterUnavailable
from .record import DecisionRecord
from .storage import (
    cards,
    chain_anchor,
    decisions,
    dialect_insert,
    rule_outcomes,
    rule_sets,
    write_transaction,
)

log = logging.getLogger(__name__)

__all__ = ["GENESIS", "Appended", "DecisionLog", "Problem", "VerifyReport", "chain_hash"]


@dataclass(frozen=True)
class Appended:
    id: str
    seq: int
    hash: str


# Stand-ins for seq and prevHash while a record is serialised outside the write lock; under the lock the
# real values replace them in the text. A per-process nonce: no request content can contain them.
_NONCE = secrets.token_hex(16)
_SEQ_MARK, _PREV_MARK = f"cds-seq-{_NONCE}", f"cds-prev-{_NONCE}"


@dataclass
class _Prepared:
    """A record serialised, and its index rows derived, before the write lock is taken."""

    record: DecisionRecord
    body: str  # canonical JSON with the stand-ins
    columns: dict
    card_rows: list[dict]
    outcome_rows: list[dict]
    rule_set: tuple[str | None, list[tuple[str, str, str]]]  # (id, members): the rules evaluated
    marks: tuple[str, str] = (_SEQ_MARK, _PREV_MARK)  # the preparing process's (the writer has its own)

    @classmethod
    def of(cls, record: DecisionRecord) -> "_Prepared":
        record.data.update(seq=_SEQ_MARK, prevHash=_PREV_MARK)
        body = canonical_json(record.data)
        return cls(
            record, body, record.columns(), record.card_rows(), record.outcome_rows(), record.rule_set()
        )

    def __getstate__(self) -> dict:
        """What the writer process needs: the text, the rows and the record's id; the record's dict (as
        large as the text) stays with the worker, which sets seq and prevHash on it from the answer."""
        return {**self.__dict__, "record": DecisionRecord({"id": self.record.id})}

    def chained(self, seq: int, prev: str) -> str:
        """The canonical JSON of the record with its seq and prevHash: the same text `canonical_json`
        gives for the record itself (audit verify recomputes and compares it)."""
        self.record.data.update(seq=seq, prevHash=prev)
        seq_mark, prev_mark = self.marks
        return self.body.replace(f'"{seq_mark}"', str(seq), 1).replace(prev_mark, prev, 1)


@functools.lru_cache(maxsize=64)
def _insert_sql(dialect, table: Table, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...] | None]:
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
    return compiled.string, compiled.positiontup  # positiontup: the key order of a positional paramstyle


def _insert_many(conn: Connection, table: Table, rows: list[dict]) -> None:
    """executemany of rows that share their keys, with the statement compiled once per table and keys:
    the writer inserts ~40 rule-outcome rows per record, and SQLAlchemy's per-row parameter processing
    was most of its CPU (1.55 ms a record at batch 1). Column types here need no bind processing."""
    if not rows:
        return
    sql, order = _insert_sql(conn.dialect, table, tuple(rows[0]))
    params = [tuple(row[k] for k in order) for row in rows] if order else rows
    conn.exec_driver_sql(sql, params)


def _insert_sets(conn: Connection, new_sets: dict[str, list[tuple[str, str, str]]]) -> None:
    """The members of rule sets not yet known to this process; a set another process (or an earlier life
    of this one) stored is left as it is (same id, same members)."""
    if not new_sets:
        return
    insert_ = dialect_insert(conn)
    rows = [
        dict(set_id=set_id, rule_id=r, rule_version=v, rule_status=s)
        for set_id, members in new_sets.items()
        for r, v, s in members
    ]
    conn.execute(insert_(rule_sets).on_conflict_do_nothing(), rows)


class DecisionLog:
    def __init__(self, engine: Engine, *, group_commit: bool = True, writer: WriterClient | None = None):
        self.engine = engine
        # Under load, the appends of one process share a transaction (audit/group_commit.py) ...
        self._committer = GroupCommitter(self._write_prepared, "cds-decision-log") if group_commit else None
        # ... and under `serve`, those of every worker, in its writer process (audit/log_writer.py).
        self._writer = writer
        self._writer_down_logged = False
        self._stored_sets: set[str] = set()  # rule sets known to be in rule_sets (one per rulebook version)

    def append(self, record: DecisionRecord) -> Appended:
        """Append and return once the record is committed: `seq` and `prevHash` are set on the record
        under the write lock, then the record and every index row derived from it are written in the
        same transaction. The record is serialised before the lock is taken, by the calling thread:
        the lock is held only for chaining and writing."""
        prepared = _Prepared.of(record)
        if self._writer is not None:
            try:
                appended, prev = self._writer.append(prepared)
            except WriterUnavailable as exc:  # not written there: written here, on the same chain
                if not self._writer_down_logged:
                    log.warning("decision-log writer unavailable (%s): this worker writes its records", exc)
                    self._writer_down_logged = True
            else:
                record.data.update(seq=appended.seq, prevHash=prev)
                return appended
        return self.append_prepared(prepared)

    def append_prepared(self, prepared: _Prepared) -> Appended:
        if self._committer is None:
            return self._write_prepared([prepared])[0]
        return self._committer.submit(prepared)

    def _write(self, records: Sequence[DecisionRecord]) -> list[Appended]:
        return self._write_prepared([_Prepared.of(r) for r in records])

    def _write_prepared(self, batch: Sequence[_Prepared]) -> list[Appended]:
        appended: list[Appended] = []
        rows, card_rows, outcome_rows = [], [], []
        with write_transaction(self.engine) as conn:
            head = current_head(conn, DECISIONS, decisions)
            seq, prev = head.seq, head.hash
            for item in batch:
                seq += 1
                body = item.chained(seq, prev)
                digest = chain_hash(prev, body)
                rows.append(dict(seq=seq, record=body, prev_hash=prev, hash=digest, **item.columns))
                card_rows += item.card_rows
                outcome_rows += item.outcome_rows
                appended.append(Appended(item.record.id, seq, digest))
                prev = digest
            new_sets = {i.rule_set[0]: i.rule_set[1] for i in batch if i.rule_set[0] not in self._stored_sets}
            new_sets.pop(None, None)
            _insert_sets(conn, new_sets)
            _insert_many(conn, decisions, rows)
            advance(conn, DECISIONS, head, seq, prev)
            _insert_many(conn, cards, card_rows)
            _insert_many(conn, rule_outcomes, outcome_rows)
        self._stored_sets.update(new_sets)  # committed
        return appended

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
