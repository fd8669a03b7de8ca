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
import functools
import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import case, event, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.errors import ThreadNotFound, VersionConflict
from app.events import Event, StoredEvent, event_data, event_from_row
from app.store.tables import UTCDateTime, events, inbound_receipts, outbox, threads

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


POOL_SIZE = 16  # Postgres connections per process


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    kwargs.setdefault("json_serializer", _json)  # compact: events.data is stored as written
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock up front: a deferred transaction that reads and then
            # writes fails at once under WAL instead of waiting for the other writer.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A fixed pool: under a burst, requests queue for a connection instead of opening and
    # closing overflow connections (each a TCP, TLS-probe and auth handshake).
    return create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=30, **kwargs)


class Store:
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

    async def get_receipt(self, channel: str, external_id: str) -> DuplicateDelivery | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(inbound_receipts.c.thread_id, inbound_receipts.c.response).where(
                        inbound_receipts.c.channel == channel,
                        inbound_receipts.c.external_id == external_id,
                    )
                )
            ).first()
        return None if row is None else DuplicateDelivery(row.thread_id, row.response)

    async def record_receipt(self, receipt: Receipt, thread_id: str | None = None) -> bool:
        """Record a delivery with no events (e.g. one that is ignored); False if seen before."""
        try:
            async with self.engine.begin() as conn:
                await self._insert_receipt(conn, receipt, thread_id, [], utcnow())
        except IntegrityError:
            return False
        return True

    # -- work claiming (leases) ---------------------------------------------------------

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
    async def _insert_receipt(
        conn: AsyncConnection,
        receipt: Receipt,
        thread_id: str | None,
        stored: list[StoredEvent],
        now: datetime,
    ) -> None:
        response = receipt.response(thread_id, stored) if receipt.response and thread_id else None
        await conn.execute(
            insert(inbound_receipts).values(
                channel=receipt.channel,
                external_id=receipt.external_id,
                thread_id=thread_id,
                response=response,
                created_at=now,
            )
        )

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

    async def _raise_if_duplicate(self, receipt: Receipt | None) -> None:
        if receipt is not None:
            seen = await self.get_receipt(receipt.channel, receipt.external_id)
            if seen is not None:
                raise seen


_THREAD_COLUMNS = (
    "id", "agent", "channel", "channel_key", "status", "version", "run_after", "created_at",
    "updated_at",
)  # fmt: skip


@functools.cache
def _create_sql(n_events: int, with_receipt: bool, n_messages: int) -> str:
    """The one statement that creates a thread on Postgres (see _create_in_one_statement).
    Parameters: $1-$9 the thread's columns, then those of _insert_args."""
    thread = (
        f"new_thread AS (INSERT INTO threads ({', '.join(_THREAD_COLUMNS)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, 10))}) RETURNING id)"
    )
    inserts = _inserts_from(
        "new_thread", itertools.count(10), n_events, with_receipt, n_messages, "$8"
    )
    topics = [RUNNABLE, *([OUTBOX] if n_messages else [])]
    wake = ", ".join(f"pg_notify('{topic}', '')" for topic in topics)
    return f"WITH {', '.join([thread, *inserts])} SELECT {wake} FROM new_thread"


@functools.cache
def _append_sql(n_events: int, with_receipt: bool, n_messages: int, topics: tuple[str, ...]) -> str:
    """The one statement that appends to a thread on Postgres (see _append_in_one_statement).
    Parameters: $1-$6 the thread's update, then those of _insert_args."""
    update = (
        "upd AS (UPDATE threads SET version = $1, status = $2, run_after = $3, updated_at = $4 "
        "WHERE id = $5 AND version = $6 RETURNING id)"
    )
    inserts = _inserts_from("upd", itertools.count(7), n_events, with_receipt, n_messages, "$4")
    wake = ", ".join(f"pg_notify('{topic}', '')" for topic in topics) or "1"
    return f"WITH {', '.join([update, *inserts])} SELECT {wake} FROM upd"


def _inserts_from(
    source: str,
    n: Iterator[int],
    n_events: int,
    with_receipt: bool,
    n_messages: int,
    stamp: str,
) -> list[str]:
    """The CTEs that insert a thread's new rows, each reading ``source`` (the thread's row
    just written), so none is written without it. ``stamp`` dates the receipt and outbox."""

    def row(*casts: str) -> str:
        return "(" + ", ".join(f"${next(n)}::{cast}" for cast in casts) + ")"

    parts = []
    if n_events:
        rows = ", ".join(row("int", "text", "text", "text", "timestamptz") for _ in range(n_events))
        parts.append(
            "new_events AS (INSERT INTO events (thread_id, seq, type, data, actor, created_at) "
            f"SELECT {source}.id, v.seq, v.type, v.data::json, v.actor, v.created_at "
            f"FROM {source}, (VALUES {rows}) AS v(seq, type, data, actor, created_at) "
            "RETURNING seq)"
        )
    if with_receipt:
        parts.append(
            "new_receipt AS (INSERT INTO inbound_receipts "
            "(channel, external_id, thread_id, response, created_at) "
            f"SELECT v.channel, v.external_id, {source}.id, v.response::jsonb, {stamp} "
            f"FROM {source}, (VALUES {row('text', 'text', 'text')}) "
            "AS v(channel, external_id, response) RETURNING channel)"
        )
    if n_messages:
        rows = ", ".join(row("int", "text", "text") for _ in range(n_messages))
        parts.append(
            "new_outbox AS (INSERT INTO outbox "
            "(thread_id, seq, channel, payload, next_attempt_at, created_at) "
            f"SELECT {source}.id, v.seq, v.channel, v.payload::jsonb, {stamp}, {stamp} "
            f"FROM {source}, (VALUES {rows}) AS v(seq, channel, payload) RETURNING id)"
        )
    return parts


def _insert_args(
    thread_id: str,
    stored: Sequence[StoredEvent],
    receipt: Receipt | None,
    messages: Sequence[OutboxMessage],
) -> list[Any]:
    """The parameters of _inserts_from, in its order."""
    args: list[Any] = []
    for one in stored:
        args += [one.seq, one.event.type, _json(event_data(one.event)), one.actor, one.created_at]
    if receipt is not None:
        response = receipt.response(thread_id, list(stored)) if receipt.response else None
        args += [receipt.channel, receipt.external_id, _json(response)]
    for m in messages:
        args += [stored[-1].seq, m.channel, _json(m.payload)]
    return args


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _event_row(thread_id: str, stored: StoredEvent) -> dict[str, Any]:
    return {
        "thread_id": thread_id,
        "seq": stored.seq,
        "type": stored.event.type,
        "data": event_data(stored.event),
        "actor": stored.actor,
        "created_at": stored.created_at,
    }


_SUMMARY = (
    "id",
    "agent",
    "channel",
    "channel_key",
    "status",
    "version",
    "created_at",
    "updated_at",
)

_LOAD_SQL = (
    f"SELECT {', '.join(f't.{c}' for c in _SUMMARY)}, "
    "e.seq, e.type, e.data, e.actor, e.created_at AS at "
    "FROM threads t LEFT JOIN events e ON e.thread_id = t.id WHERE t.id = $1 ORDER BY e.seq"
)


def _summary_fields(row: Any) -> dict[str, Any]:
    """A thread's summary from a SQLAlchemy row or an asyncpg record."""
    if isinstance(row, asyncpg.Record):
        return {c: row[c] for c in _SUMMARY}
    return {c: getattr(row, c) for c in _SUMMARY}
