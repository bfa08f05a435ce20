"""The database's layout, versioned with Alembic migrations (audit/migrations/versions/).

`upgrade` brings a database to the newest revision. It runs under the database-wide write lock
(storage.write_transaction: a file lock and BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL),
so workers or instances starting together on one database migrate it once and the others find it done.
`cds-service serve` upgrades in the master before forking; its workers only `require_current`.
A database made before migrations existed (the tables of the baseline revision, no `alembic_version`)
is stamped at the baseline, then upgraded: no record is rewritten or lost.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from .storage import SchemaOutdated, write_transaction

log = logging.getLogger(__name__)
# Alembic announces its plugins and dialect at INFO on every start; our own line says what changed.
logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"

# The baseline revision's tables and columns: what a database made before migrations must have to be
# stamped at the baseline (anything older cannot be upgraded in place).
BASELINE_COLUMNS = {
    "decisions": {
        "seq", "id", "recorded_at", "service_id", "hook", "hook_instance", "status", "patient_ref",
        "user_ref", "client_id", "max_indicator", "record", "prev_hash", "hash",
    },
    "chain_anchor": {"id", "after_seq", "hash", "purged_at", "purged_count", "chain"},
    "chain_head": {"id", "seq", "hash"},
    "feedback": {"id", "dedupe_key", "card_uuid", "outcome", "seq", "prev_hash", "hash", "rule_version"},
    "llm_outputs": {"key", "model_id", "output", "seq", "prev_hash", "hash", "generation_ms"},
    "cards": {"card_uuid", "decision_id", "rule_id", "indicator"},
    "rule_outcomes": {"decision_id", "rule_id", "rule_status", "outcome"},
    "jwt_replay": {"key", "issuer", "expires_at"},
}  # fmt: skip


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate to the newest revision (idempotent); returns (revision before, revision after)."""
    with write_transaction(engine) as conn:
        before = current_revision(conn)
        if before is None and _stamp_premigration_database(conn):
            before = f"{BASELINE} (stamped: made before migrations)"
        command.upgrade(_config(conn), "head")
        after = current_revision(conn)
    if before != after:
        log.info("database schema migrated: %s -> %s", before or "empty", after)
    return before, after


def require_current(engine: Engine) -> None:
    """Refuse to serve from a database that is not at this version's revision (upgraded by `serve`'s
    master, or by `cds-service db upgrade` run as a deployment step)."""
    with engine.connect() as conn:
        found = current_revision(conn)
    expected = head_revision()
    if found != expected:
        raise SchemaOutdated(
            f"the database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{found or 'none'}, this version needs {expected}: run `cds-service db upgrade`"
        )


def _stamp_premigration_database(conn: Connection) -> bool:
    tables = set(inspect(conn).get_table_names())
    present = tables & set(BASELINE_COLUMNS)
    if not present:
        return False  # an empty database: the baseline revision creates everything
    missing = {
        table: sorted(columns - {c["name"] for c in inspect(conn).get_columns(table)})
        for table, columns in BASELINE_COLUMNS.items()
        if table in present
    }
    missing = {table: columns for table, columns in missing.items() if columns}
    if missing or present != set(BASELINE_COLUMNS):
        detail = "; ".join(f"{t} lacks {', '.join(c)}" for t, c in missing.items()) or (
            f"missing tables: {', '.join(sorted(set(BASELINE_COLUMNS) - present))}"
        )
        raise SchemaOutdated(
            f"the decision log at {conn.engine.url.render_as_string(hide_password=True)} predates schema "
            f"migrations and its layout is older than the baseline ({detail}). Keep it (its records verify "
            "with that version) and point CDS_DATA_DIR or CDS_DECISION_LOG at a new location."
        )
    command.stamp(_config(conn), BASELINE)
    return True
