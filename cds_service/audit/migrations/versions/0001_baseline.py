"""Baseline: the layout of release 0.1.0, the last made without migrations (storage.metadata.create_all).

A database made by that release is stamped at this revision (audit/schema_version.py), not re-created.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cards",
        sa.Column("card_uuid", sa.String(length=36), nullable=False),
        sa.Column("decision_id", sa.String(length=36), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("rule_id", sa.String(length=96), nullable=False),
        sa.Column("rule_version", sa.String(length=160), nullable=False),
        sa.Column("indicator", sa.String(length=16), nullable=False),
        sa.Column("issued_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("card_uuid"),
    )
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cards_decision_id"), ["decision_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cards_rule_id"), ["rule_id"], unique=False)

    op.create_table(
        "chain_anchor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("after_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("purged_at", sa.String(length=32), nullable=False),
        sa.Column("purged_count", sa.Integer(), nullable=False),
        sa.Column("chain", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "decisions",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("recorded_at", sa.String(length=32), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=False),
        sa.Column("hook_instance", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("patient_ref", sa.String(length=128), nullable=True),
        sa.Column("user_ref", sa.String(length=160), nullable=True),
        sa.Column("client_id", sa.String(length=256), nullable=True),
        sa.Column("max_indicator", sa.String(length=16), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("hash"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_patient", ["patient_ref"], unique=False)
        batch_op.create_index("ix_decisions_recorded", ["recorded_at"], unique=False)
        batch_op.create_index("ix_decisions_service", ["service_id"], unique=False)

    op.create_table(
        "feedback",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("dedupe_key", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("card_uuid", sa.String(length=36), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("accepted_suggestions", sa.Text(), nullable=True),
        sa.Column("override_system", sa.String(length=256), nullable=True),
        sa.Column("override_code", sa.String(length=128), nullable=True),
        sa.Column("override_display", sa.String(length=512), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", sa.String(length=40), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.Column("decision_id", sa.String(length=36), nullable=True),
        sa.Column("rule_id", sa.String(length=96), nullable=True),
        sa.Column("rule_version", sa.String(length=160), nullable=True),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
        sa.UniqueConstraint("seq"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_card_uuid"), ["card_uuid"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_rule_id"), ["rule_id"], unique=False)

    op.create_table(
        "jwt_replay",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("jwt_replay", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jwt_replay_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "llm_outputs",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=160), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=True),
        sa.Column("generation_ms", sa.Integer(), nullable=True),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("key"),
        sa.UniqueConstraint("seq"),
    )
    with op.batch_alter_table("llm_outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_llm_outputs_created_at"), ["created_at"], unique=False)

    op.create_table(
        "rule_outcomes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("decision_id", sa.String(length=36), nullable=False),
        sa.Column("recorded_at", sa.String(length=32), nullable=False),
        sa.Column("rule_id", sa.String(length=96), nullable=False),
        sa.Column("rule_version", sa.String(length=32), nullable=False),
        sa.Column("rule_status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("cards_shown", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rule_outcomes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rule_outcomes_decision_id"), ["decision_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rule_outcomes_recorded_at"), ["recorded_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_rule_outcomes_rule_id"), ["rule_id"], unique=False)


def downgrade() -> None:
    # Dropping the baseline would delete the decision log: never done by a migration.
    raise NotImplementedError("the baseline revision is not downgraded (it holds the decision log)")
