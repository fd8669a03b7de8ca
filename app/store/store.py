"""The store: one implementation over SQLAlchemy async, for Postgres and SQLite alike.

Appends are optimistic: the caller passes the version it read; the thread row's version is
bumped with ``WHERE version = expected`` in the same transaction that inserts the events, so
two writers can never both succeed, and ``(thread_id, seq)`` as primary key backs that up.
The projected status and ``run_after`` (when a worker should look at the thread next: now,
at a durable timer, or NULL for "when someone writes") change in that same transaction.

Wake-ups: after a commit that makes a thread runnable or adds outbox rows, in-process hooks
run (``on_commit``), and on Postgres a ``NOTIFY`` in the same transaction tells the other
processes (delivered only if the transaction commits).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import ThreadNotFound, VersionConflict
from app.events import Event, StoredEvent, event_from_row
from app.store.claims import Claims
from app.store.engine import POOL_SIZE, make_engine
from app.store.pgsql import (
    _LOAD_SQL,
    _THREAD_COLUMNS,
    _append_sql,
    _create_sql,
    _event_row,
    _insert_args,
    _summary_fields,
)
from app.store.receipts import Receipts
from app.store.records import (
    ANSWERED,
    HUMAN_PRIORITY,
    OUTBOX,
    RETRY_LATER,
    RUNNABLE,
    ChannelKeyTaken,
    DuplicateDelivery,
    OutboxMessage,
    Receipt,
    ThreadRecord,
    ThreadSummary,
    utcnow,
)
from app.store.tables import events, outbox, threads

__all__ = [
    "ANSWERED",
    "HUMAN_PRIORITY",
    "OUTBOX",
    "RETRY_LATER",
    "RUNNABLE",
    "ChannelKeyTaken",
    "DuplicateDelivery",
    "OutboxMessage",
    "Receipt",
    "Store",
    "ThreadRecord",
    "ThreadSummary",
    "make_engine",
    "utcnow",
]


class Store(Claims, Receipts):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self.on_commit: list[Callable[[str], None]] = []  # with RUNNABLE, ANSWERED or OUTBOX

    async def _notify(self, conn: AsyncConnection, topic: str) -> None:
        if self.is_postgres:
            await conn.execute(select(func.pg_notify(topic, "")))

    def _committed(self, *topics: str) -> None:
        for topic in topics:
            for hook in self.on_commit:
                hook(topic)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(make_engine(url))

    async def close(self) -> None:
        await self.engine.dispose()

    async def fill_pool(self) -> None:
        """Postgres: open the pool's connections now, all at once, so that the first burst
        of requests after start-up does not wait for connections to be made (each a TCP
        handshake, authentication and type look-ups)."""
        if not self.is_postgres:
            return
        opened = await asyncio.gather(
            *(self.engine.connect().start() for _ in range(POOL_SIZE)), return_exceptions=True
        )
        for conn in opened:
            if isinstance(conn, AsyncConnection):
                await conn.close()  # back to the pool, open
        for failed in opened:
            if isinstance(failed, BaseException):
                raise failed

    async def ping(self) -> None:
        """One round trip to the database; raises if it does not answer."""
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # -- threads and events -------------------------------------------------------------

    async def create_thread(
        self,
        *,
        agent: str,
        channel: str,
        new_events: Sequence[tuple[Event, str | None]],
        status: str,
        channel_key: str | None = None,
        receipt: Receipt | None = None,
        thread_id: str | None = None,
        messages: Sequence[OutboxMessage] = (),
    ) -> ThreadRecord:
        """Create a thread with its first events, runnable at once, and its outbox
        ``messages`` (numbered after the last event) in one transaction.

        Raises DuplicateDelivery when ``receipt`` was seen before.
        """
        thread_id = thread_id or str(uuid.uuid4())
        now = utcnow()
        values: dict[str, Any] = {
            "id": thread_id,
            "agent": agent,
            "channel": channel,
            "channel_key": channel_key,
            "status": status,
            "version": len(new_events),
            "run_after": now,
            "created_at": now,
            "updated_at": now,
        }
        stored = [StoredEvent(i, ev, actor, now) for i, (ev, actor) in enumerate(new_events, 1)]
        try:
            if self.is_postgres:
                await self._create_in_one_statement(values, stored, receipt, messages)
            else:
                async with self.engine.begin() as conn:
                    await conn.execute(insert(threads).values(values))
                    await self._insert_events(conn, thread_id, 0, new_events, now)
                    if receipt is not None:
                        await self._insert_receipt(conn, receipt, thread_id, stored, now)
                    await self._insert_outbox(conn, thread_id, stored[-1].seq, messages, now)
                    if messages:
                        await self._notify(conn, OUTBOX)
        except IntegrityError:
            await self._raise_if_duplicate(receipt)
            if channel_key is not None:
                taken = await self.find_by_channel_key(channel, channel_key)
                if taken is not None:
                    raise ChannelKeyTaken(taken) from None
            raise
        self._committed(RUNNABLE, *([OUTBOX] if messages else []))
        return ThreadRecord(
            id=thread_id,
            agent=agent,
            channel=channel,
            channel_key=channel_key,
            status=status,
            version=len(new_events),
            created_at=now,
            updated_at=now,
            events=stored,
        )

    async def _create_in_one_statement(
        self,
        values: dict[str, Any],
        stored: list[StoredEvent],
        receipt: Receipt | None,
        messages: Sequence[OutboxMessage],
    ) -> None:
        """Postgres: thread, events, receipt, outbox and wake-ups in one statement, one round
        trip.

        A single statement is atomic by itself (no BEGIN/COMMIT needed); the rows of its
        data-modifying CTEs land together, the foreign keys and unique constraints are checked
        at its end, and the NOTIFY is sent when it commits. This is the Slack webhook's path
        (every mention starts a thread), so the SQL is written out once per shape and sent
        as is: compiling the statement cost more than running it."""
        args = [values[c] for c in _THREAD_COLUMNS]
        args += _insert_args(values["id"], stored, receipt, messages)
        await self._one_statement(
            _create_sql(len(stored), receipt is not None, len(messages)), args
        )

    async def _append_in_one_statement(
        self,
        thread_id: str,
        expected_version: int,
        status: str,
        run_after: datetime | None,
        now: datetime,
        stored: list[StoredEvent],
        receipt: Receipt | None,
        messages: Sequence[OutboxMessage],
        topics: Sequence[str],
    ) -> bool:
        """Postgres: the versioned update, the events, the receipt, the outbox rows and the
        wake-ups in one statement (one round trip); False if the version did not match, in
        which case nothing was written. Every insert reads the updated row, so none happens
        without it."""
        new_version = expected_version + len(stored)
        args = [new_version, status, run_after, now, thread_id, expected_version]
        args += _insert_args(thread_id, stored, receipt, messages)
        sql = _append_sql(len(stored), receipt is not None, len(messages), tuple(topics))
        return await self._one_statement(sql, args) is not None

    async def _one_statement(self, sql: str, args: list[Any], *, rows: bool = False) -> Any:
        """Run one statement on its own; its first row (or all of them: ``rows``). Sent on the
        pooled connection's asyncpg connection itself, outside any transaction (so atomic by
        itself), without SQLAlchemy's execution layer: that layer cost more CPU than asyncpg
        and the round trip together. A constraint violation is raised as SQLAlchemy's
        IntegrityError, and a connection found dead is invalidated, as that layer would have
        done."""
        async with self.engine.connect() as conn:
            raw: asyncpg.Connection = (await conn.get_raw_connection()).driver_connection
            try:
                return await (raw.fetch if rows else raw.fetchrow)(sql, *args)
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise IntegrityError(sql, args, exc) from exc
            except BaseException:
                if raw.is_closed():  # lost: keep the pool from handing it out again
                    await conn.invalidate()
                raise

    async def append(
        self,
        thread_id: str,
        expected_version: int,
        new_events: Sequence[tuple[Event, str | None]],
        *,
        status: str,
        run_after: datetime | None,
        receipt: Receipt | None = None,
        messages: Sequence[OutboxMessage] = (),
        notify: bool = False,
    ) -> list[StoredEvent]:
        """Append after ``expected_version``; VersionConflict if someone else wrote first.

        ``run_after``: when a worker should step the thread next (None: not until someone
        writes). ``notify``: wake workers now (the writer will not step the thread itself).
        """
        now = utcnow()
        topics = [OUTBOX] if messages else []
        if notify and run_after is not None:
            topics.append(ANSWERED if run_after <= now - HUMAN_PRIORITY / 2 else RUNNABLE)
        new_version = expected_version + len(new_events)
        if self.is_postgres:
            stored = [
                StoredEvent(expected_version + i, ev, actor, now)
                for i, (ev, actor) in enumerate(new_events, 1)
            ]
            try:
                updated = await self._append_in_one_statement(
                    thread_id, expected_version, status, run_after, now, stored, receipt,
                    messages, topics,
                )  # fmt: skip
            except IntegrityError as exc:
                await self._raise_if_duplicate(receipt)
                raise VersionConflict(thread_id, expected_version) from exc
            if not updated:
                async with self.engine.connect() as conn:
                    exists = await conn.scalar(
                        select(threads.c.id).where(threads.c.id == thread_id)
                    )
                if exists is None:
                    raise ThreadNotFound(thread_id)
                raise VersionConflict(thread_id, expected_version)
            self._committed(*topics)
            return stored
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(threads)
                    .where(threads.c.id == thread_id, threads.c.version == expected_version)
                    .values(
                        version=new_version,
                        status=status,
                        run_after=run_after,
                        updated_at=now,
                    )
                )
                if result.rowcount != 1:
                    exists = await conn.scalar(
                        select(threads.c.id).where(threads.c.id == thread_id)
                    )
                    if exists is None:
                        raise ThreadNotFound(thread_id)
                    raise VersionConflict(thread_id, expected_version)
                stored = await self._insert_events(
                    conn, thread_id, expected_version, new_events, now
                )
                if receipt is not None:
                    await self._insert_receipt(conn, receipt, thread_id, stored, now)
                await self._insert_outbox(conn, thread_id, stored[-1].seq, messages, now)
                for topic in topics:
                    await self._notify(conn, topic)
        except IntegrityError as exc:
            await self._raise_if_duplicate(receipt)
            raise VersionConflict(thread_id, expected_version) from exc
        self._committed(*topics)
        return stored

    async def load(self, thread_id: str) -> ThreadRecord:
        if self.is_postgres:
            # The thread and its events in one statement: one round trip, one snapshot.
            found = await self._one_statement(_LOAD_SQL, [thread_id], rows=True)
            if not found:
                raise ThreadNotFound(thread_id)
            stored = [
                StoredEvent(r["seq"], event_from_row(r["type"], r["data"]), r["actor"], r["at"])
                for r in found
                if r["seq"] is not None
            ]
            return ThreadRecord(**_summary_fields(found[0]), events=stored)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(threads).where(threads.c.id == thread_id))).first()
            if row is None:
                raise ThreadNotFound(thread_id)
            rows = await conn.execute(
                select(
                    events.c.seq, events.c.type, events.c.data, events.c.actor, events.c.created_at
                )
                .where(events.c.thread_id == thread_id)
                .order_by(events.c.seq)
            )
            stored = [
                StoredEvent(r.seq, event_from_row(r.type, r.data), r.actor, r.created_at)
                for r in rows
            ]
        return ThreadRecord(**_summary_fields(row), events=stored)

    async def find_by_channel_key(self, channel: str, channel_key: str) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.scalar(
                select(threads.c.id).where(
                    threads.c.channel == channel, threads.c.channel_key == channel_key
                )
            )

    async def list_threads(
        self, *, status: str | None = None, limit: int = 50
    ) -> list[ThreadSummary]:
        query = select(threads).order_by(threads.c.updated_at.desc()).limit(limit)
        if status is not None:
            query = query.where(threads.c.status == status)
        async with self.engine.connect() as conn:
            return [ThreadSummary(**_summary_fields(r)) for r in await conn.execute(query)]

    # -- receipts -----------------------------------------------------------------------

    @staticmethod
    async def _insert_events(
        conn: AsyncConnection,
        thread_id: str,
        after: int,
        new_events: Sequence[tuple[Event, str | None]],
        now: datetime,
    ) -> list[StoredEvent]:
        stored = [
            StoredEvent(after + i, ev, actor, now) for i, (ev, actor) in enumerate(new_events, 1)
        ]
        if stored:
            await conn.execute(insert(events), [_event_row(thread_id, s) for s in stored])
        return stored

    @staticmethod
    async def _insert_outbox(
        conn: AsyncConnection,
        thread_id: str,
        seq: int,
        messages: Sequence[OutboxMessage],
        now: datetime,
    ) -> None:
        if messages:
            await conn.execute(
                insert(outbox),
                [
                    {
                        "thread_id": thread_id,
                        "seq": seq,
                        "channel": m.channel,
                        "payload": m.payload,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for m in messages
                ],
            )
