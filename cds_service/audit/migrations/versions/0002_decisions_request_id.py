"""decisions.request_id: the X-Request-Id of the call, indexed, so a log line leads to its decision.

Records written before it carry no requestId: the column stays NULL for them, as `DecisionRecord.columns`
derives it, so `audit verify` still passes on every old record. No record is rewritten.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
        batch_op.create_index("ix_decisions_request", ["request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch_op:
        batch_op.drop_index("ix_decisions_request")
        batch_op.drop_column("request_id")
