"""Hash chains in the service's database: the decision log and the two tables that are not derivable from
it (clinician feedback, cached LLM text).

Each chained row carries ``seq``, ``prev_hash`` and ``hash = sha256(prev_hash + "\\n" + canonical JSON)``
over its content and its seq. A `chain_head` row per chain (updated in the same transaction as the
append) makes truncating the tail detectable; after retention a `chain_anchor` row holds the hash of the
last purged row. Appends run under the database-wide write lock (storage.write_transaction), so one
chain stays linear across threads, gunicorn workers and instances sharing PostgreSQL.

Anyone who can write to the database can still rewrite a whole chain and its head consistently:
`audit verify` prints each chain's head (``chain:seq:hash``) so it can be kept outside the database,
and ``--expect-head`` checks that the chain still passes through it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from ..canonical import canonical_json, sha256_hex, utc_now
from .storage import chain_anchor, chain_head, feedback, llm_outputs

GENESIS = "0" * 64


def chain_hash(prev_hash: str, body: str) -> str:
    return sha256_hex(prev_hash + "\n" + body)


@dataclass(frozen=True)
class Chain:
    name: str
    head_id: int  # its row in chain_head


DECISIONS = Chain("decisions", 1)
FEEDBACK = Chain("feedback", 2)
LLM_OUTPUTS = Chain("llm_outputs", 3)


@dataclass(frozen=True)
class ChainedTable:
    """A table whose rows form their own chain: the hash covers `columns` and the seq."""

    chain: Chain
    table: Table
    columns: tuple[str, ...]
    label: str  # the column that names a row in a report, besides its seq

    def body(self, row) -> str:
        return canonical_json({**{c: row[c] for c in self.columns}, "seq": row["seq"]})

    def digest(self, row) -> str:
        return chain_hash(row["prev_hash"], self.body(row))


FEEDBACK_CHAIN = ChainedTable(
    FEEDBACK,
    feedback,
    (
        "dedupe_key",
        "service_id",
        "card_uuid",
        "outcome",
        "accepted_suggestions",
        "override_system",
        "override_code",
        "override_display",
        "user_comment",
        "outcome_timestamp",
        "received_at",
        "decision_id",
        "rule_id",
        "rule_version",
    ),
    "id",
)

LLM_CHAIN = ChainedTable(
    LLM_OUTPUTS,
    llm_outputs,
    ("key", "model_id", "task", "created_at", "output", "accepted", "reasons", "generation_ms"),
    "key",
)


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    stored: bool  # a chain_head row exists (else it is created on the next append)


def latest_anchor(conn: Connection, chain: Chain):
    """(after_seq, hash) of the newest purge of this chain, or None."""
    where = chain_anchor.c.chain == chain.name
    if chain is DECISIONS:  # rows written before anchors named their chain
        where = or_(where, chain_anchor.c.chain.is_(None))
    return conn.execute(
        select(chain_anchor.c.after_seq, chain_anchor.c.hash)
        .where(where)
        .order_by(chain_anchor.c.id.desc())
        .limit(1)
    ).first()


# The head's read and update run on every append: compiled once per dialect and sent to the driver, they
# skip SQLAlchemy's per-execution statement building and cache-key work (most of the writer's CPU per batch).
_HEAD_STATEMENTS = {
    "read": select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == bindparam("head_id")),
    "update": update(chain_head)
    .where(chain_head.c.id == bindparam("head_id"))
    .values(seq=bindparam("head_seq"), hash=bindparam("head_hash")),
}


@functools.lru_cache(maxsize=16)
def _head_sql(dialect, name: str) -> tuple[str, tuple[str, ...] | None]:
    compiled = _HEAD_STATEMENTS[name].compile(dialect=dialect)
    return compiled.string, compiled.positiontup  # positiontup: the key order of a positional paramstyle


def _head_statement(conn: Connection, name: str, **params):
    sql, order = _head_sql(conn.dialect, name)
    return conn.exec_driver_sql(sql, tuple(params[k] for k in order) if order else params)


def stored_head(conn: Connection, chain: Chain):
    return _head_statement(conn, "read", head_id=chain.head_id).first()


def current_head(conn: Connection, chain: Chain, table: Table) -> Head:
    """The head to append after; call under the write lock."""
    head = stored_head(conn, chain)
    if head is not None:
        return Head(head.seq, head.hash, True)
    last = conn.execute(
        select(table.c.seq, table.c.hash)
        .where(table.c.seq.is_not(None))
        .order_by(table.c.seq.desc())
        .limit(1)
    ).first()
    if last is not None:
        return Head(last.seq, last.hash, False)
    anchor = latest_anchor(conn, chain)
    return Head(anchor.after_seq, anchor.hash, False) if anchor else Head(0, GENESIS, False)


def advance(conn: Connection, chain: Chain, head: Head, seq: int, digest: str) -> None:
    if head.stored:
        _head_statement(conn, "update", head_id=chain.head_id, head_seq=seq, head_hash=digest)
    else:
        conn.execute(insert(chain_head).values(id=chain.head_id, seq=seq, hash=digest))


def append_row(conn: Connection, spec: ChainedTable, values: dict) -> tuple[int, str]:
    """Insert one row at the end of its chain. The caller holds the write lock (write_transaction)."""
    head = current_head(conn, spec.chain, spec.table)
    seq = head.seq + 1
    row = {**values, "seq": seq, "prev_hash": head.hash}
    digest = spec.digest(row)
    conn.execute(insert(spec.table).values(**row, hash=digest))
    advance(conn, spec.chain, head, seq, digest)
    return seq, digest


def purge_prefix(conn: Connection, spec: ChainedTable, time_column: str, cutoff_iso: str) -> int:
    """Delete the rows up to the newest one older than the cutoff; its hash anchors what remains.
    The caller holds the write lock."""
    table = spec.table
    last = conn.execute(
        select(table.c.seq, table.c.hash)
        .where(table.c[time_column] < cutoff_iso, table.c.seq.is_not(None))
        .order_by(table.c.seq.desc())
        .limit(1)
    ).first()
    if last is None:
        return 0
    n = conn.execute(delete(table).where(table.c.seq <= last.seq)).rowcount
    conn.execute(
        insert(chain_anchor).values(
            after_seq=last.seq, hash=last.hash, purged_at=utc_now(), purged_count=n, chain=spec.chain.name
        )
    )
    return n


@dataclass(frozen=True)
class ExpectedHead:
    """An externally kept chain position: ``chain:seq:hash``."""

    chain: str
    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> "ExpectedHead":
        parts = text.strip().split(":")
        names = {c.name for c in (DECISIONS, FEEDBACK, LLM_OUTPUTS)}
        if len(parts) != 3 or parts[0] not in names or not parts[1].isdigit() or len(parts[2]) != 64:
            raise ValueError(
                f"expected CHAIN:SEQ:HASH with CHAIN one of {', '.join(sorted(names))} and a 64-hex hash"
            )
        return cls(parts[0], int(parts[1]), parts[2].lower())

    def __str__(self) -> str:
        return f"{self.chain}:{self.seq}:{self.hash}"
