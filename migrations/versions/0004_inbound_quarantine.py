"""inbound_quarantine: messages that can never be processed as they are

An inbound message that fails for a reason of its own (a mail nested too deep to parse, a
shape no handler takes) is kept here with the reason, out of the way of the next one; the
IMAP reader moves it to ``IMAP_FAILED_FOLDER`` as well. ``relaybot intake list`` shows them,
``relaybot intake retry ID`` runs one again, ``/metrics`` counts those held.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.tables import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inbound_quarantine",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(512), nullable=True),
        sa.Column("sender", sa.String(320), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), server_default="held", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inbound_quarantine"),
        sa.UniqueConstraint("channel", "digest", name="uq_inbound_quarantine_channel_digest"),
    )
    op.create_index(
        "ix_inbound_quarantine_status_created_at", "inbound_quarantine", ["status", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("inbound_quarantine")
