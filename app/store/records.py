"""What the store hands out and takes in: thread records, receipts, outbox messages, the
wake-up topics, and the errors an append can meet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from app.events import StoredEvent

RETRY_LATER = timedelta(seconds=30)
# A person who writes is waiting for the bot, so their thread goes before the backlog:
# workers claim the oldest run_after first, and human input is dated this far back
# (first come, first served among people; ahead of every thread that is merely runnable).
HUMAN_PRIORITY = timedelta(days=1)
RUNNABLE = "relaybot_runnable"
ANSWERED = "relaybot_answered"  # runnable, and a person is waiting: it goes first
OUTBOX = "relaybot_outbox"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ThreadSummary:
    id: str
    agent: str
    channel: str
    channel_key: str | None
    status: str
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ThreadRecord(ThreadSummary):
    events: list[StoredEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Receipt:
    """An inbound delivery's identity. A second delivery with the same id is a duplicate;
    ``response`` builds (from the stored events) what the first delivery was answered."""

    channel: str
    external_id: str
    response: Callable[[str, list[StoredEvent]], dict[str, Any]] | None = None


class DuplicateDelivery(Exception):
    def __init__(self, thread_id: str | None, response: dict[str, Any] | None) -> None:
        super().__init__("duplicate delivery")
        self.thread_id = thread_id
        self.response = response


class ChannelKeyTaken(Exception):
    """Another delivery created the thread for this conversation first."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"conversation already has thread {thread_id}")
        self.thread_id = thread_id


@dataclass(frozen=True)
class OutboxMessage:
    channel: str
    payload: dict[str, Any]
