"""Persistence: threads, their append-only events, inbound receipts and the outbox."""

from app.events import StoredEvent
from app.store.store import (
    ChannelKeyTaken,
    DuplicateDelivery,
    OutboxMessage,
    Receipt,
    Store,
    ThreadRecord,
    ThreadSummary,
    utcnow,
)

__all__ = [
    "ChannelKeyTaken",
    "DuplicateDelivery",
    "OutboxMessage",
    "Receipt",
    "Store",
    "StoredEvent",
    "ThreadRecord",
    "ThreadSummary",
    "utcnow",
]
