"""The service's own storage (decision log, card index, feedback) through SQLAlchemy Core.

SQLite in WAL mode by default (no server needed); PostgreSQL when ``CDS_DECISION_LOG`` is a
``postgresql://`` URL (psycopg 3 driver). Several gunicorn workers append concurrently: appends take
a database-wide write lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL advisory lock) so the hash chain
stays linear.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()
SEQ = BigInteger().with_variant(Integer, "sqlite")


def chained_columns() -> tuple[Column, ...]:
    """seq, prev_hash, hash: what a row of a side chain (feedback, LLM text; audit/chain.py) carries."""
    return (Column("seq", SEQ, unique=True), Column("prev_hash", String(64)), Column("hash", String(64)))


decisions = Table(
    "decisions",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("recorded_at", String(32), nullable=False),  # ISO 8601 UTC, sortable
    Column("service_id", String(128), nullable=False),
    Column("hook", String(64), nullable=False),
    Column("hook_instance", String(64), nullable=False),
    Column("status", Integer, nullable=False),  # HTTP status answered
    Column("patient_ref", String(128)),
    Column("user_ref", String(160)),
    Column("client_id", String(256)),
    Column("max_indicator", String(16)),
    Column("request_id", String(128)),  # X-Request-Id: from a log line to its decision (migration 0002)
    Column("rule_set", String(64)),  # the rules evaluated: rule_sets.set_id (migration 0003)
    Column("record", Text, nullable=False),  # canonical JSON of the decision
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)
Index("ix_decisions_patient", decisions.c.patient_ref)
Index("ix_decisions_recorded", decisions.c.recorded_at)
Index("ix_decisions_service", decisions.c.service_id)
Index("ix_decisions_request", decisions.c.request_id)

# Where the retained chain starts after a purge: the hash of the last purged record.
chain_anchor = Table(
    "chain_anchor",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("after_seq", SEQ, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("purged_at", String(32), nullable=False),
    Column("purged_count", Integer, nullable=False),
    Column("chain", String(32)),  # decisions (also when NULL) | llm_outputs (audit/chain.py)
)

# The newest record's seq and hash per chain (id: audit/chain.py), updated with every append: truncating
# the tail is detectable.
chain_head = Table(
    "chain_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", SEQ, nullable=False),
    Column("hash", String(64), nullable=False),
)

cards = Table(
    "cards",
    metadata,
    Column("card_uuid", String(36), primary_key=True),
    Column("decision_id", String(36), nullable=False, index=True),
    Column("service_id", String(128), nullable=False),
    Column("rule_id", String(96), nullable=False, index=True),
    Column("rule_version", String(160), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("issued_at", String(32), nullable=False),
)

rule_outcomes = Table(
    "rule_outcomes",
    metadata,
    Column("id", SEQ, primary_key=True, autoincrement=True),
    Column("decision_id", String(36), nullable=False, index=True),
    Column("recorded_at", String(32), nullable=False, index=True),
    Column("rule_id", String(96), nullable=False, index=True),
    Column("rule_version", String(32), nullable=False),
    Column("rule_status", String(16), nullable=False),
    # fired | unevaluable | skipped | error: a rule that did not fire has no row (migration 0003)
    Column("outcome", String(16), nullable=False),
    Column("cards_shown", Integer, nullable=False),
)

# The rules a call evaluated, one row per rule per distinct set (a set changes only when the rulebook
# does): with decisions.rule_set, how many times each rule version was evaluated (migration 0003).
rule_sets = Table(
    "rule_sets",
    metadata,
    Column("set_id", String(64), primary_key=True),  # audit/record.py rule_set_id
    Column("rule_id", String(96), primary_key=True),
    Column("rule_version", String(32), primary_key=True),
    Column("rule_status", String(16), primary_key=True),
)


def rule_set_members(conn: Connection, set_ids) -> dict[str, list[tuple[str, str, str]]]:
    """set id -> its (rule id, version, status) members, for each id asked (an id with no rows: [])."""
    ids = sorted(set_ids)
    out: dict[str, list[tuple[str, str, str]]] = {set_id: [] for set_id in ids}
    for start in range(0, len(ids), 500):  # bounded IN lists
        query = select(
            rule_sets.c.set_id, rule_sets.c.rule_id, rule_sets.c.rule_version, rule_sets.c.rule_status
        ).where(rule_sets.c.set_id.in_(ids[start : start + 500]))
        for set_id, rule_id, version, status in conn.execute(query):
            out[set_id].append((rule_id, version, status))
    return out


feedback = Table(
    "feedback",
    metadata,
    Column("id", SEQ, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(64), nullable=False, unique=True),
    Column("service_id", String(128), nullable=False),
    Column("card_uuid", String(36), nullable=False, index=True),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", Text),  # JSON list of uuids
    Column("override_system", String(256)),
    Column("override_code", String(128)),
    Column("override_display", String(512)),
    Column("user_comment", Text),
    Column("outcome_timestamp", String(40), nullable=False),
    Column("received_at", String(32), nullable=False),
    Column("decision_id", String(36)),
    Column("rule_id", String(96), index=True),
    Column("rule_version", String(160)),
    # Feedback is not derivable from decisions: its own hash chain (audit/chain.py), appended under the lock.
    *chained_columns(),
)

# LLM text by prompt: shared by every worker, so text finished after one call's deadline shows on the next.
llm_outputs = Table(
    "llm_outputs",
    metadata,
    Column("key", String(64), primary_key=True),  # sha256(model id, task, prompt)
    Column("model_id", String(160), nullable=False),
    Column("task", String(32), nullable=False),
    Column("created_at", String(32), nullable=False, index=True),
    Column("output", Text),
    Column("accepted", Integer, nullable=False),
    Column("reasons", Text),  # JSON list
    Column("generation_ms", Integer),
    # Chained like feedback, and each row's hash re-checked before its text is served (reasoning/cache.py).
    *chained_columns(),
)

# JWT jtis already used (protocol/replay.py): the unique key makes first use atomic across workers and
# instances; rows are purged once expired.
jwt_replay = Table(
    "jwt_replay",
    metadata,
    Column("key", String(64), primary_key=True),  # sha256(issuer, jti)
    Column("issuer", Text, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),  # Unix seconds
)

APPEND_LOCK_KEY = 0x434453  # PostgreSQL advisory lock id for chain appends ("CDS")


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (BEGIN IMMEDIATE for appends)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged decision survives a crash
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")

        return engine
    # hide_parameters: a database error logs its SQL, never the bound values (records, comments)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True)


class SchemaOutdated(RuntimeError):
    """The database was created by an older version whose tables lack columns this one writes."""


@contextmanager
def _sqlite_writer_lock(engine: Engine):
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    # One open file description per holder: flock excludes threads of this process as well as others.
    fd = os.open(f"{database}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def write_transaction(engine: Engine):
    """A transaction holding the database-wide append lock (serialises chain appends across processes)."""
    if engine.dialect.name == "sqlite":
        # Writers of other processes queue on a file lock and wake when it is released: SQLite's own
        # busy handler polls with sleeps of up to 100 ms, which made the latency tail under load.
        with _sqlite_writer_lock(engine), engine.connect() as conn:
            conn.info["immediate"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info["immediate"] = False
        return
    with engine.connect() as conn:
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPEND_LOCK_KEY})
            yield conn


def dialect_insert(conn: Connection):
    """INSERT ... ON CONFLICT DO NOTHING for the current dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def init_schema(engine: Engine) -> None:
    """Create or upgrade the tables (Alembic migrations; idempotent)."""
    from .schema_version import upgrade

    upgrade(engine)


def open_engine(url: str, *, migrate: bool = True) -> Engine:
    """The engine, its database upgraded to this version's schema (idempotent, under the write lock);
    with `migrate=False` the schema must already be current (gunicorn workers: `serve` upgraded it)."""
    from .schema_version import require_current, upgrade

    engine = make_engine(url)
    try:
        upgrade(engine) if migrate else require_current(engine)
    except Exception:
        engine.dispose()
        raise
    return engine
