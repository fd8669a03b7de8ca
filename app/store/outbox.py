"""The outbox: outbound messages written with the events that cause them, sent by the
dispatcher with retries. Claiming a row pushes its ``next_attempt_at`` a lease ahead, so a
dispatcher that dies mid-send leaves the row to be retried (at-least-once delivery)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import SendFailed
from app.store.store import utcnow
from app.store.tables import outbox

PENDING, SENT, DEAD = "pending", "sent", "dead"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    thread_id: str
    seq: int
    channel: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    provider_ref: str | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


def _row(r: Any) -> OutboxRow:
    return OutboxRow(**{name: getattr(r, name) for name in OutboxRow.__dataclass_fields__})


class Outbox:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def claim(self, *, limit: int, lease: timedelta) -> list[OutboxRow]:
        """Take up to ``limit`` due rows; each counts as one attempt from now on."""
        now = utcnow()
        due = (
            select(outbox.c.id)
            .where(outbox.c.status == PENDING, outbox.c.next_attempt_at <= now)
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(due.scalar_subquery()))
                .values(next_attempt_at=now + lease, attempts=outbox.c.attempts + 1)
                .returning(*outbox.c)
            )
            return sorted((_row(r) for r in result), key=lambda r: r.id)

    async def sent(self, row: OutboxRow, provider_ref: str | None) -> None:
        await self._settle(row, status=SENT, provider_ref=provider_ref, sent_at=utcnow())

    async def failed(self, row: OutboxRow, error: str, *, retry_at: datetime | None) -> None:
        """Record a failed attempt: retry at ``retry_at``, or give up (dead) when None."""
        if retry_at is None:
            await self._settle(row, status=DEAD, last_error=error[:2000])
        else:
            await self._settle(row, next_attempt_at=retry_at, last_error=error[:2000])

    async def provider_ref(self, thread_id: str, seq: int, channel: str) -> str | None:
        """The provider's reference for an earlier message, once it is sent.

        Raises SendFailed (permanent) if that message is dead: there is nothing to update."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(outbox.c.status, outbox.c.provider_ref).where(
                        outbox.c.thread_id == thread_id,
                        outbox.c.seq == seq,
                        outbox.c.channel == channel,
                    )
                )
            ).first()
        if row is not None and row.status == DEAD:
            raise SendFailed(
                f"the message to update (seq {seq}) was never delivered", permanent=True
            )
        return None if row is None else row.provider_ref

    async def payload_of(self, thread_id: str, seq: int, channel: str) -> dict[str, Any] | None:
        """The contact an earlier outbox row holds (whatever became of it), or None."""
        async with self.engine.connect() as conn:
            payload = await conn.scalar(
                select(outbox.c.payload).where(
                    outbox.c.thread_id == thread_id,
                    outbox.c.seq == seq,
                    outbox.c.channel == channel,
                )
            )
        return payload if isinstance(payload, dict) else None

    async def retry(self, row_id: int) -> bool:
        """Give a dead row another round of attempts."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(outbox)
                .where(outbox.c.id == row_id, outbox.c.status == DEAD)
                .values(status=PENDING, attempts=0, next_attempt_at=utcnow())
            )
        return bool(result.rowcount)

    async def list(
        self, *, thread_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[OutboxRow]:
        query = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
        if thread_id is not None:
            query = query.where(outbox.c.thread_id == thread_id)
        if status is not None:
            query = query.where(outbox.c.status == status)
        async with self.engine.connect() as conn:
            return sorted((_row(r) for r in await conn.execute(query)), key=lambda r: r.id)

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.status, func.count()).group_by(outbox.c.status)
            )
            return {status: int(n) for status, n in rows}

    async def next_due(self) -> datetime | None:
        async with self.engine.connect() as conn:
            due: datetime | None = await conn.scalar(
                select(func.min(outbox.c.next_attempt_at)).where(outbox.c.status == PENDING)
            )
        return due

    async def _settle(self, row: OutboxRow, **values: Any) -> None:
        """Only the claim that made this attempt may settle it: if the lease ran out and
        another dispatcher took the row over, this late verdict is dropped."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(outbox)
                .where(
                    outbox.c.id == row.id,
                    outbox.c.status == PENDING,
                    outbox.c.attempts == row.attempts,
                )
                .values(**values)
            )
