"""rule_sets and decisions.rule_set: evaluations counted per rule set, not one rule_outcomes row per rule.

A call evaluates every rule of its service (~40) and few fire. Writing a `rule_outcomes` row for each was
most of the decision-log writer's work per record; now a call's record names the set of rules it
evaluated (`decisions.rule_set`, the id `DecisionRecord.rule_set` derives) whose members are stored once
(`rule_sets`), and `rule_outcomes` keeps only outcomes other than ``not-fired``. The PDCA report counts
evaluations from the sets and firings from the outcomes, as before.

Existing records are not rewritten: each one's set is derived from its chained record (the same function
`audit verify` re-derives it with), and the not-fired rows, derivable from the records, are deleted.
Downgrade derives them back from the records.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cds_service.audit.record import NOT_FIRED, DecisionRecord

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500

_decisions = sa.table("decisions", sa.column("seq"), sa.column("record"), sa.column("rule_set"))
_rule_sets = sa.table(
    "rule_sets",
    sa.column("set_id"),
    sa.column("rule_id"),
    sa.column("rule_version"),
    sa.column("rule_status"),
)
_outcomes = sa.table(
    "rule_outcomes",
    sa.column("decision_id"),
    sa.column("recorded_at"),
    sa.column("rule_id"),
    sa.column("rule_version"),
    sa.column("rule_status"),
    sa.column("outcome"),
    sa.column("cards_shown"),
)


def _records(conn):
    """(seq, DecisionRecord) in seq order, in batches; a record that cannot be read is skipped (left for
    `audit verify` to name)."""
    after = None
    while True:
        query = sa.select(_decisions.c.seq, _decisions.c.record).order_by(_decisions.c.seq).limit(BATCH)
        if after is not None:
            query = query.where(_decisions.c.seq > after)
        rows = conn.execute(query).all()
        if not rows:
            return
        for seq, text in rows:
            try:
                record = DecisionRecord(json.loads(text))
                record.rule_set()  # readable rules
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            yield seq, record
        after = rows[-1][0]


def upgrade() -> None:
    op.create_table(
        "rule_sets",
        sa.Column("set_id", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=96), nullable=False),
        sa.Column("rule_version", sa.String(length=32), nullable=False),
        sa.Column("rule_status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("set_id", "rule_id", "rule_version", "rule_status"),
    )
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("rule_set", sa.String(length=64), nullable=True))
    conn = op.get_bind()
    known: set[str] = set()
    updates: list[dict] = []
    set_rule = (
        sa.update(_decisions)
        .where(_decisions.c.seq == sa.bindparam("row_seq"))
        .values(rule_set=sa.bindparam("set_id"))
    )
    for seq, record in _records(conn):
        set_id, members = record.rule_set()
        if set_id is None:
            continue
        if set_id not in known:
            conn.execute(
                sa.insert(_rule_sets),
                [dict(set_id=set_id, rule_id=r, rule_version=v, rule_status=s) for r, v, s in members],
            )
            known.add(set_id)
        updates.append({"row_seq": seq, "set_id": set_id})
        if len(updates) >= BATCH:
            conn.execute(set_rule, updates)
            updates = []
    if updates:
        conn.execute(set_rule, updates)
    conn.execute(sa.delete(_outcomes).where(_outcomes.c.outcome == NOT_FIRED))


def downgrade() -> None:
    conn = op.get_bind()
    for _, record in _records(conn):
        every = record.outcome_rows(include_not_fired=True)
        rows = [row for row in every if row["outcome"] == NOT_FIRED]
        if rows:
            conn.execute(sa.insert(_outcomes), rows)
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_column("rule_set")
    op.drop_table("rule_sets")
