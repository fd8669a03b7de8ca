"""refunds: the refunds agent's ledger of refund calls (reserve, call, settle)

The first revision of the refunds agent's own branch. ``orders`` came with core revision
0002, from before agents had schemas of their own; this branch starts after it.

Revision ID: refunds_0001
Revises:
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.tables import UTCDateTime

revision: str = "refunds_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("refunds",)
depends_on: str | Sequence[str] | None = "0002"


def upgrade() -> None:
    op.create_table(
        "refunds",
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("thread_id", sa.String(36), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_refunds"),
    )
    op.create_index("ix_refunds_order_id_status", "refunds", ["order_id", "status"])


def downgrade() -> None:
    op.drop_table("refunds")
