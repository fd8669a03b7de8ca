"""events.data as json rather than jsonb on Postgres

An event is written once and always read whole; nothing queries inside it. json keeps the
compact text the store sends (jsonb's binary form is about a third larger for an event's few
keys) and is handed back without conversion. SQLite stores JSON as text already.

The ALTER rewrites the events table under an exclusive lock: on a large table run
``relaybot migrate`` in a quiet moment.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN data TYPE json USING data::json")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN data TYPE jsonb USING data::jsonb")
