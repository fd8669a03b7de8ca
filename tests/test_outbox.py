"""The outbox and its dispatcher: real rows in SQLite and Postgres, a real local webhook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from app.dispatch import Dispatcher
from app.events import DoneForNow, UserMessage
from app.store import OutboxMessage, Store, utcnow
from app.store.outbox import Outbox
from channels.webhook import WebhookSender
from tests.fakes.http_sink import HttpSink

SECRET = "k" * 32


async def thread_with_rows(store: Store, n: int) -> str:
    record = await store.create_thread(
        agent="deploybot",
        channel="api",
        new_events=[(UserMessage(text="hi"), None)],
        status="running",
    )
    for i in range(n):
        await store.append(
            record.id,
            1 + i,
            [(DoneForNow(message=f"m{i}"), None)],
            status="done",
            run_after=None,
            messages=[OutboxMessage("webhook", {"text": f"m{i}"})],
        )
    return record.id


async def test_claim_takes_each_due_row_once(store: Store) -> None:
    await thread_with_rows(store, 3)
    outbox = Outbox(store.engine)
    first = await outbox.claim(limit=2, lease=timedelta(minutes=1))
    second = await outbox.claim(limit=5, lease=timedelta(minutes=1))
    assert [r.payload["text"] for r in first] == ["m0", "m1"]
    assert [r.payload["text"] for r in second] == ["m2"]
    assert all(r.attempts == 1 for r in first + second)
    assert await outbox.claim(limit=5, lease=timedelta(minutes=1)) == []  # all in flight
    # A dispatcher that died mid-send: the lease runs out and the row is due again.
    again = await outbox.claim(limit=5, lease=timedelta(seconds=-1))
    assert again == []
    await outbox.failed(first[0], "boom", retry_at=utcnow())
    [retried] = await outbox.claim(limit=5, lease=timedelta(minutes=1))
    assert (retried.id, retried.attempts, retried.last_error) == (first[0].id, 2, "boom")


async def test_a_late_verdict_from_an_expired_claim_is_dropped(store: Store) -> None:
    await thread_with_rows(store, 1)
    outbox = Outbox(store.engine)
    [slow] = await outbox.claim(limit=1, lease=timedelta(seconds=-1))  # its lease runs out
    [fast] = await outbox.claim(limit=1, lease=timedelta(minutes=1))  # another takes it over
    await outbox.sent(fast, "ts-fast")
    await outbox.failed(slow, "timed out", retry_at=None)  # the first one gives up, late
    [row] = await outbox.list()
    assert (row.status, row.provider_ref, row.attempts) == ("sent", "ts-fast", 2)


async def test_sent_dead_and_retry(store: Store) -> None:
    tid = await thread_with_rows(store, 2)
    outbox = Outbox(store.engine)
    a, b = await outbox.claim(limit=5, lease=timedelta(minutes=1))
    await outbox.sent(a, "ts-1")
    await outbox.failed(b, "channel_not_found", retry_at=None)
    assert await outbox.counts() == {"sent": 1, "dead": 1}
    [dead] = await outbox.list(status="dead")
    assert (dead.id, dead.last_error) == (b.id, "channel_not_found")
    sent = (await outbox.list(thread_id=tid))[0]
    assert (sent.status, sent.provider_ref) == ("sent", "ts-1") and sent.sent_at is not None
    assert await outbox.retry(b.id) is True and await outbox.retry(a.id) is False
    [again] = await outbox.claim(limit=5, lease=timedelta(minutes=1))
    assert (again.id, again.attempts) == (b.id, 1)


@pytest.fixture
async def hook() -> AsyncIterator[HttpSink]:
    sink = await HttpSink().start()
    yield sink
    await sink.stop()


async def dispatch_until(
    dispatcher: Dispatcher, outbox: Outbox, done: int, within: float = 10
) -> None:
    task = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(within):
            while True:
                counts = await outbox.counts()
                if counts.get("sent", 0) + counts.get("dead", 0) >= done:
                    break
                await asyncio.sleep(0.02)
    finally:
        await dispatcher.stop(grace=1)
        await task


async def test_fails_three_times_then_succeeds(store: Store, hook: HttpSink) -> None:
    tid = await thread_with_rows(store, 1)
    hook.statuses.extend([503, 500, (502, {})])
    outbox = Outbox(store.engine)
    async with httpx.AsyncClient() as http:
        sender = WebhookSender(hook.url, SECRET, http)
        dispatcher = Dispatcher(outbox, {"webhook": sender}, backoff_base=0.05, poll_interval=0.05)
        await dispatch_until(dispatcher, outbox, done=1)
    [row] = await outbox.list(thread_id=tid)
    assert (row.status, row.attempts, row.provider_ref) == ("sent", 4, "200")
    assert len(hook.calls) == 4
    # Every attempt carried the same delivery id and a valid signature of its body.
    assert {h["x-relaybot-delivery"] for h in hook.headers} == {str(row.id)}
    body = json.dumps(hook.calls[-1], separators=(",", ":")).encode()
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hook.headers[-1]["x-relaybot-signature"] == expected
    gaps = [b - a for a, b in zip(hook.times, hook.times[1:], strict=False)]
    assert gaps[1] > gaps[0] * 0.9  # backing off (with jitter), not hammering


async def test_retry_after_is_honoured(store: Store, hook: HttpSink) -> None:
    await thread_with_rows(store, 1)
    hook.statuses.append((429, {"Retry-After": "1"}))
    outbox = Outbox(store.engine)
    async with httpx.AsyncClient() as http:
        dispatcher = Dispatcher(
            outbox,
            {"webhook": WebhookSender(hook.url, SECRET, http)},
            backoff_base=0.01,
            poll_interval=0.05,
        )
        await dispatch_until(dispatcher, outbox, done=1)
    assert len(hook.times) == 2 and hook.times[1] - hook.times[0] >= 0.95


async def test_dead_rows_do_not_block_the_others(store: Store, hook: HttpSink) -> None:
    await thread_with_rows(store, 3)
    # m0: a permanent 4xx; m1: fails every time; m2: fine.
    hook.statuses.extend([404, 500, 500])
    outbox = Outbox(store.engine)
    async with httpx.AsyncClient() as http:
        dispatcher = Dispatcher(
            outbox,
            {"webhook": WebhookSender(hook.url, SECRET, http)},
            backoff_base=0.01,
            max_attempts=2,
            poll_interval=0.05,
            concurrency=1,
        )
        await dispatch_until(dispatcher, outbox, done=3)
    rows = {r.payload["text"]: r for r in await outbox.list()}
    assert (rows["m0"].status, rows["m0"].attempts) == ("dead", 1)
    assert "404" in (rows["m0"].last_error or "")
    assert rows["m2"].status == "sent"
    assert (rows["m1"].status, rows["m1"].attempts) in {("dead", 2), ("sent", 2)}


async def test_a_row_for_an_unconfigured_channel_is_dead(store: Store) -> None:
    await thread_with_rows(store, 1)
    outbox = Outbox(store.engine)
    await dispatch_until(Dispatcher(outbox, {}, poll_interval=0.05), outbox, done=1)
    [row] = await outbox.list()
    assert row.status == "dead" and "no sender" in (row.last_error or "")


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    import random

    d = Dispatcher(Outbox.__new__(Outbox), {}, backoff_base=1, backoff_max=30, rng=random.Random(1))
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (6, 30), (20, 30)]:
        assert ceiling / 2 <= d.backoff(attempt) <= ceiling
