"""Work claiming: leases on threads in the ``threads`` table (``FOR UPDATE SKIP LOCKED`` on
Postgres), so any number of workers share one database and a thread is stepped by one of
them at a time; renewed by a heartbeat, released when a step ends, expired when a worker
dies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.records import HUMAN_PRIORITY, RETRY_LATER, utcnow
from app.store.tables import UTCDateTime, threads


class Claims:
    """The store's claims on threads (mixed into ``Store``)."""

    engine: AsyncEngine

    async def claim(
        self, worker_id: str, *, lease: timedelta, limit: int, urgent_only: bool = False
    ) -> list[str]:
        """Claim up to ``limit`` runnable threads whose lease is free or expired, oldest
        run_after first. ``urgent_only``: only threads a person is waiting on."""
        now = utcnow()
        due = now - HUMAN_PRIORITY / 2 if urgent_only else now
        candidates = (
            select(threads.c.id)
            .where(
                threads.c.run_after <= due,
                or_(threads.c.claimed_until.is_(None), threads.c.claimed_until < now),
            )
            .order_by(threads.c.run_after)
            .limit(limit)
            .with_for_update(skip_locked=True)  # Postgres; SQLite has one writer anyway
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(threads)
                .where(threads.c.id.in_(candidates.scalar_subquery()))
                .values(claimed_by=worker_id, claimed_until=now + lease)
                .returning(threads.c.id)
            )
            return list(result.scalars())

    async def release(
        self,
        thread_id: str,
        worker_id: str,
        *,
        idle_at_version: int | None,
        run_after: datetime | None = None,
        retry_in: timedelta = RETRY_LATER,
    ) -> None:
        """Give the thread back.

        ``idle_at_version``: the version the worker left it idle at, and ``run_after`` when it
        needs a worker next (a timer); if someone appended since, it stays runnable as it is.
        None: the step did not finish (crash, shutdown): let any worker retry in ``retry_in``.
        """
        if idle_at_version is None:
            wake: Any = utcnow() + retry_in
        else:
            wake = case(
                (threads.c.version == idle_at_version, literal(run_after, UTCDateTime())),
                else_=threads.c.run_after,
            )
        async with self.engine.begin() as conn:
            await conn.execute(
                update(threads)
                .where(threads.c.id == thread_id, threads.c.claimed_by == worker_id)
                .values(claimed_by=None, claimed_until=None, run_after=wake)
            )

    async def renew(self, worker_id: str, thread_ids: Sequence[str], *, lease: timedelta) -> int:
        """Extend this worker's leases on threads it is still stepping."""
        if not thread_ids:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(threads)
                .where(threads.c.id.in_(list(thread_ids)), threads.c.claimed_by == worker_id)
                .values(claimed_until=utcnow() + lease)
            )
        return int(result.rowcount)

    async def next_run_after(self) -> datetime | None:
        """When the next thread becomes claimable: its run_after, or its lease's end if it
        is claimed (a thread being stepped is runnable, but not claimable)."""
        claimable_at = case(
            (threads.c.claimed_until > threads.c.run_after, threads.c.claimed_until),
            else_=threads.c.run_after,
        )
        async with self.engine.connect() as conn:
            soonest: datetime | None = await conn.scalar(
                select(func.min(claimable_at)).where(threads.c.run_after.is_not(None))
            )
        return soonest

    # -- helpers --------------------------------------------------------------------------
