"""SQLAlchemy Core tables. Changes to these go through an alembic revision in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONType: Any = JSON().with_variant(JSONB(), "postgresql")
# events.data: written once, read whole, never queried inside (migration 0003)
EventJSON: Any = JSON()
BigId: Any = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

threads = Table(
    "threads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("agent", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    # Slack "team/channel/thread_ts", an email's root Message-ID; NULL for API threads.
    Column("channel_key", String(512), nullable=True),
    Column("status", String(24), nullable=False),
    Column("version", Integer, nullable=False, server_default="0"),
    # Runnable when run_after <= now; NULL means nothing to do until something arrives.
    Column("run_after", UTCDateTime(), nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("channel", "channel_key"),
    Index(None, "run_after"),
    Index(None, "status", "updated_at"),
)

events = Table(
    "events",
    metadata,
    Column("thread_id", String(36), ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", EventJSON, nullable=False),
    Column("actor", String(255), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    # The primary key is the optimistic-concurrency guard: one event per (thread, seq).
    PrimaryKeyConstraint("thread_id", "seq"),
)

inbound_receipts = Table(
    "inbound_receipts",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("external_id", String(512), primary_key=True),
    Column("thread_id", String(36), nullable=True),
    Column("response", JSONType, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("thread_id", String(36), ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("provider_ref", String(512), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    UniqueConstraint("thread_id", "seq", "channel"),
    Index(None, "status", "next_attempt_at"),
)

# Inbound messages that can never be processed as they are (a mail too deep to parse, say):
# kept with the reason, out of the way of the next one, until someone retries or drops them.
# One row per channel and content (the same bytes delivered again find their row).
inbound_quarantine = Table(
    "inbound_quarantine",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("source", String(32), nullable=False),  # how it came: imap, webhook, postmark
    Column("digest", String(64), nullable=False),  # sha256 of the content, hex
    Column("external_id", String(512), nullable=True),  # its Message-ID, when it has one
    Column("sender", String(320), nullable=True),
    Column("reason", Text, nullable=False),
    Column("content", LargeBinary, nullable=True),  # None when it was too large to keep
    Column("size", BigInteger, nullable=False),
    Column("status", String(16), nullable=False, server_default="held"),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("channel", "digest"),
    Index(None, "status", "created_at"),
)
