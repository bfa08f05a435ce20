"""The database schema is versioned with Alembic: created and upgraded by migrations, once, under the lock."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect, text
from test_decision_log import _fake_record

from cds_service.audit import schema_version
from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.record import DecisionRecord
from cds_service.audit.schema_version import (
    BASELINE,
    current_revision,
    head_revision,
    require_current,
    upgrade,
)
from cds_service.audit.storage import SchemaOutdated, make_engine, metadata
from cds_service.cli import main


class _LegacyRecord(DecisionRecord):
    """A record as an older layout stores it: without the columns added since (`lacks`), and, before
    0003, a rule_outcomes row for every rule evaluated and no rule set."""

    lacks = ("request_id", "rule_set")

    def columns(self) -> dict:
        return {k: v for k, v in super().columns().items() if k not in self.lacks}

    def outcome_rows(self, *, include_not_fired: bool = True) -> list[dict]:
        return super().outcome_rows(include_not_fired=include_not_fired)

    def rule_set(self):
        return None, []


class _BaselineRecord(_LegacyRecord):
    pass


class _Release0002Record(_LegacyRecord):
    lacks = ("rule_set",)


def _with_rules(record: DecisionRecord, i: int) -> DecisionRecord:
    """Three rules evaluated, of two versions of the rulebook; one fires on every third call."""
    version = "1.0.0" if i < 4 else "1.1.0"
    record.data["rules"] = [
        {
            "id": "fires",
            "version": version,
            "status": "active",
            "outcome": "fired" if i % 3 == 0 else "not-fired",
        },
        {"id": "quiet", "version": "2.0.0", "status": "active", "outcome": "not-fired"},
        {
            "id": "trial",
            "version": "0.1.0",
            "status": "shadow",
            "outcome": "skipped" if i == 5 else "not-fired",
        },
    ]
    return record


def _differences(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_migrations_build_exactly_the_tables_the_code_declares(tmp_path, request, dialect):
    url = (
        f"sqlite:///{tmp_path / 'new.sqlite3'}"
        if dialect == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = make_engine(url)
    assert upgrade(engine) == (None, head_revision())
    assert upgrade(engine) == (head_revision(), head_revision())  # idempotent
    assert _differences(engine) == []  # a column added to storage.py without a migration fails here
    require_current(engine)


def test_a_database_made_before_migrations_is_stamped_then_upgraded_with_every_record(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    with engine.begin() as conn:  # the layout of the last release without migrations, with records in it
        schema_version.command.upgrade(schema_version._config(conn), BASELINE)
    DecisionLog(engine, group_commit=False)._write([_BaselineRecord(_fake_record(i).data) for i in range(3)])
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    before, after = upgrade(engine)
    assert before.startswith(f"{BASELINE} (stamped") and after == head_revision()
    log = DecisionLog(engine)
    report = log.verify()
    assert report.ok and report.checked == 3  # every record kept, the chain intact across the upgrade
    new = _fake_record(3)
    new.data["requestId"] = "req-after-upgrade"
    assert log.append(new).seq == 4
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT seq, request_id FROM decisions ORDER BY seq")).all()
    assert ids == [(1, None), (2, None), (3, None), (4, "req-after-upgrade")]
    assert log.verify().ok and _differences(engine) == []


def test_upgrading_to_rule_sets_keeps_every_count_and_record(tmp_path):
    """0003: the not-fired rows of records written before go, each record's rule set is derived from the
    chained record, and the PDCA report counts what it counted before; the chain verifies."""
    from cds_service.audit.pdca import collect

    engine = make_engine(f"sqlite:///{tmp_path / '0002.sqlite3'}")
    with engine.begin() as conn:
        schema_version.command.upgrade(schema_version._config(conn), "0002")
    records = [_Release0002Record(_with_rules(_fake_record(i), i).data) for i in range(8)]
    DecisionLog(engine, group_commit=False)._write(records)
    with engine.connect() as conn:  # what the report counted before, one row per rule evaluated
        counted = text(
            "SELECT rule_id, rule_version, rule_status, count(*), "
            "sum(CASE WHEN outcome = 'fired' THEN 1 ELSE 0 END), "
            "sum(CASE WHEN outcome IN ('skipped', 'unevaluable') THEN 1 ELSE 0 END) "
            "FROM rule_outcomes GROUP BY rule_id, rule_version, rule_status"
        )
        before = {tuple(r[:3]): tuple(r[3:]) for r in conn.execute(counted)}
    assert sum(n for n, _, _ in before.values()) == 24
    assert upgrade(engine) == ("0002", head_revision())
    after = {
        (s.rule_id, s.version, s.status): (s.evaluated, s.fired + s.shadow_fired, s.skipped)
        for s in collect(engine)
    }
    assert after == before
    with engine.connect() as conn:
        outcomes = conn.execute(text("SELECT count(*) FROM rule_outcomes")).scalar_one()
        sets = conn.execute(text("SELECT count(DISTINCT rule_set) FROM decisions")).scalar_one()
    assert outcomes == 3 + 1 and sets == 2  # fired and skipped only; two rulebook versions
    with engine.begin() as conn:  # downgrade derives the not-fired rows back from the records
        schema_version.command.downgrade(schema_version._config(conn), "0002")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rule_outcomes")).scalar_one() == 24
        assert "rule_set" not in {c["name"] for c in inspect(conn).get_columns("decisions")}
    assert upgrade(engine) == ("0002", head_revision())
    log = DecisionLog(engine)
    assert log.verify().ok
    log.append(_with_rules(_fake_record(8), 8))
    report = log.verify()
    assert report.ok and report.counts["rule_sets"] == 2  # the new record names a set already stored
    assert _differences(engine) == []


def test_a_worker_refuses_a_database_that_was_not_upgraded(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with pytest.raises(SchemaOutdated, match="run `cds-service db upgrade`"):
        require_current(engine)


def test_threads_upgrading_one_empty_database_together_migrate_it_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.sqlite3'}"
    results, errors = [], []
    barrier = threading.Barrier(6)

    def start():
        engine = make_engine(url)  # an engine each, as separate processes would have
        barrier.wait()
        try:
            results.append(upgrade(engine))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    head = head_revision()
    assert results.count((None, head)) == 1 and results.count((head, head)) == 5  # one migrated, five waited


def test_db_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    first = runner.invoke(main, ["db", "current"])
    assert first.exit_code == 1 and "at none" in first.output
    assert runner.invoke(main, ["db", "upgrade"]).output.strip().endswith(f"empty -> {head_revision()}")
    assert "nothing to do" in runner.invoke(main, ["db", "upgrade"]).output
    done = runner.invoke(main, ["db", "current"])
    assert done.exit_code == 0 and f"at {head_revision()}" in done.output
    with make_engine(f"sqlite:///{tmp_path / 'decision-log.sqlite3'}").connect() as conn:
        assert current_revision(conn) == head_revision()
