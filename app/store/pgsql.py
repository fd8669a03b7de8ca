"""Postgres: the one-statement forms of the store's writes and its load, written out once per
shape and sent as is (compiling a statement cost more than running it). See
``Store._create_in_one_statement`` and ``Store._append_in_one_statement``."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg

from app.events import StoredEvent, event_data
from app.store.engine import _json
from app.store.records import OUTBOX, RUNNABLE, OutboxMessage, Receipt

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
