"""The store's contract, run against SQLite and Postgres alike."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from app.errors import ThreadNotFound, VersionConflict
from app.events import DoneForNow, ErrorEvent, HumanResponse, UserMessage
from app.store import DuplicateDelivery, OutboxMessage, Receipt, Store, utcnow
from tests.conftest import pg_admin


async def new_thread(store: Store, text: str = "hi", **kw: object) -> str:
    record = await store.create_thread(
        agent="deploybot",
        channel="api",
        new_events=[(UserMessage(text=text), "alice")],
        status="running",
        **kw,  # type: ignore[arg-type]
    )
    return record.id


async def test_create_and_load_round_trip(store: Store) -> None:
    tid = await new_thread(store, "deploy it")
    record = await store.load(tid)
    assert (record.agent, record.status, record.version) == ("deploybot", "running", 1)
    [first] = record.events
    assert first.seq == 1 and first.actor == "alice"
    assert first.event == UserMessage(text="deploy it")
    assert first.created_at.tzinfo is not None


async def test_append_assigns_dense_sequence_numbers(store: Store) -> None:
    tid = await new_thread(store)
    stored = await store.append(
        tid,
        1,
        [(ErrorEvent(kind="llm", message="boom"), None), (DoneForNow(message="ok"), None)],
        status="done",
        run_after=None,
    )
    assert [s.seq for s in stored] == [2, 3]
    record = await store.load(tid)
    assert [e.seq for e in record.events] == [1, 2, 3]
    assert (record.status, record.version) == ("done", 3)


async def test_stale_version_is_a_conflict_and_writes_nothing(store: Store) -> None:
    tid = await new_thread(store)
    await store.append(tid, 1, [(DoneForNow(message="a"), None)], status="done", run_after=None)
    with pytest.raises(VersionConflict):
        await store.append(tid, 1, [(DoneForNow(message="b"), None)], status="done", run_after=None)
    record = await store.load(tid)
    assert [e.event for e in record.events][1:] == [DoneForNow(message="a")]


async def test_concurrent_writers_never_lose_or_duplicate(store: Store) -> None:
    """Many writers race, each retrying on conflict: every event lands exactly once."""
    tid = await new_thread(store)

    async def writer(n: int) -> None:
        for _ in range(50):
            version = (await store.load(tid)).version
            try:
                await store.append(
                    tid,
                    version,
                    [(UserMessage(text=f"w{n}"), None)],
                    status="running",
                    run_after=utcnow(),
                )
                return
            except VersionConflict:
                await asyncio.sleep(0)
        raise AssertionError("writer never got through")

    await asyncio.gather(*(writer(n) for n in range(8)))
    record = await store.load(tid)
    assert [e.seq for e in record.events] == list(range(1, 10))
    texts = sorted(e.event.text for e in record.events[1:])  # type: ignore[union-attr]
    assert texts == sorted(f"w{n}" for n in range(8))


async def test_unknown_thread(store: Store) -> None:
    with pytest.raises(ThreadNotFound):
        await store.load("nope")
    with pytest.raises(ThreadNotFound):
        await store.append(
            "nope", 0, [(DoneForNow(message="x"), None)], status="done", run_after=None
        )


async def test_receipt_makes_a_second_delivery_a_duplicate(store: Store) -> None:
    def answer(thread_id: str, stored: list) -> dict:
        return {"thread_id": thread_id, "seqs": [s.seq for s in stored]}

    receipt = Receipt("api", "key-1", answer)
    tid = await new_thread(store, receipt=receipt)
    with pytest.raises(DuplicateDelivery) as dup:
        await new_thread(store, receipt=receipt)
    assert dup.value.response == {"thread_id": tid, "seqs": [1]}
    assert len(await store.list_threads()) == 1  # the duplicate created nothing

    reply = HumanResponse(kind="response", text="yes")
    await store.append(
        tid,
        1,
        [(reply, None)],
        status="running",
        run_after=utcnow(),
        receipt=Receipt("api", "key-2", answer),
    )
    with pytest.raises(DuplicateDelivery):
        await store.append(
            tid,
            2,
            [(reply, None)],
            status="running",
            run_after=utcnow(),
            receipt=Receipt("api", "key-2", answer),
        )
    assert (await store.load(tid)).version == 2
    assert await store.record_receipt(Receipt("slack", "Ev1")) is True
    assert await store.record_receipt(Receipt("slack", "Ev1")) is False


async def test_channel_key_is_unique_per_channel(store: Store) -> None:
    tid = await new_thread(store, channel_key=None)
    await new_thread(store, channel_key=None)  # many API threads have no key
    keyed = await store.create_thread(
        agent="deploybot",
        channel="slack",
        channel_key="T1/C1/1.0",
        new_events=[(UserMessage(text="x", channel="slack"), None)],
        status="running",
    )
    assert await store.find_by_channel_key("slack", "T1/C1/1.0") == keyed.id
    assert await store.find_by_channel_key("slack", "T1/C1/2.0") is None
    assert tid != keyed.id


async def test_outbox_rows_are_written_with_their_event(store: Store) -> None:
    from sqlalchemy import select

    from app.store.tables import outbox

    tid = await new_thread(store)
    await store.append(
        tid,
        1,
        [(DoneForNow(message="ok"), None)],
        status="done",
        run_after=None,
        messages=[OutboxMessage("slack", {"text": "ok"})],
    )
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(select(outbox.c.thread_id, outbox.c.seq, outbox.c.payload))
        ).all()
    assert [(r.thread_id, r.seq, r.payload) for r in rows] == [(tid, 2, {"text": "ok"})]


async def test_claims_are_exclusive_and_leases_expire(store: Store) -> None:
    tids = {await new_thread(store) for _ in range(5)}
    a = await store.claim("worker-a", lease=timedelta(minutes=5), limit=3)
    b = await store.claim("worker-b", lease=timedelta(minutes=5), limit=10)
    assert len(a) == 3 and len(b) == 2 and set(a) | set(b) == tids and not set(a) & set(b)
    assert await store.claim("worker-c", lease=timedelta(minutes=5), limit=10) == []
    # An expired lease is taken over.
    expired = await store.claim("worker-c", lease=timedelta(seconds=-1), limit=10)
    assert expired == []  # nothing free: a and b hold theirs
    await store.release(a[0], "worker-a", idle_at_version=0)  # appended since: stays runnable
    assert await store.claim("worker-c", lease=timedelta(seconds=-1), limit=10) == [a[0]]
    assert await store.claim("worker-d", lease=timedelta(minutes=1), limit=10) == [a[0]]


async def test_release_of_an_idle_thread_makes_it_not_runnable(store: Store) -> None:
    tid = await new_thread(store)
    await store.append(tid, 1, [(DoneForNow(message="x"), None)], status="done", run_after=utcnow())
    assert await store.claim("w", lease=timedelta(minutes=1), limit=1) == [tid]
    await store.release(tid, "w", idle_at_version=2)
    assert await store.claim("w", lease=timedelta(minutes=1), limit=1) == []


async def test_delayed_threads_are_not_claimed_early(store: Store) -> None:
    tid = await new_thread(store)
    await store.append(
        tid,
        1,
        [(ErrorEvent(kind="llm", message="x"), None)],
        status="running",
        run_after=utcnow() + timedelta(hours=1),
    )
    assert await store.claim("w", lease=timedelta(minutes=1), limit=5) == []
    soonest = await store.next_run_after()
    assert soonest is not None and soonest.tzinfo is not None


async def test_list_threads_by_status(store: Store) -> None:
    a = await new_thread(store)
    await new_thread(store)
    await store.append(a, 1, [(DoneForNow(message="x"), None)], status="done", run_after=None)
    assert [t.id for t in await store.list_threads(status="done")] == [a]
    assert len(await store.list_threads()) == 2


async def test_claims_take_the_oldest_run_after_first(store: Store) -> None:
    backlog = [await new_thread(store) for _ in range(3)]
    answered = await new_thread(store)
    await store.append(
        answered,
        1,
        [(HumanResponse(kind="response", text="go"), None)],
        status="running",
        run_after=utcnow() - timedelta(days=1),
    )
    first = await store.claim("w", lease=timedelta(minutes=1), limit=1)
    assert first == [answered]
    rest = await store.claim("w", lease=timedelta(minutes=1), limit=10)
    assert rest == backlog


async def test_next_run_after_skips_threads_being_stepped(store: Store) -> None:
    """An idle worker must not wake at once for a thread another worker is stepping."""
    tid = await new_thread(store)
    assert await store.claim("busy", lease=timedelta(minutes=5), limit=1) == [tid]
    soonest = await store.next_run_after()
    assert soonest is not None and soonest > utcnow() + timedelta(minutes=4)


async def test_a_connection_postgres_dropped_is_not_handed_out_again(pg_url: str) -> None:
    """Postgres restarted under the pool: the write on the dead connection fails, and the
    next one gets a fresh connection (the one-statement writes bypass SQLAlchemy's execution
    layer, which is what notices a dead connection otherwise)."""
    store = Store.from_url(pg_url)
    try:
        tid = await new_thread(store)
        database = pg_url.rsplit("/", 1)[1]
        await pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
        )
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver says of a lost link
            await new_thread(store)
        for _ in range(3):  # every later write finds a live connection
            await new_thread(store)
        assert (await store.load(tid)).version == 1
    finally:
        await store.close()


async def test_the_migrated_schema_is_the_one_the_code_declares(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.store.migrate import merged_metadata

    metadata = merged_metadata()  # the core's tables and the agents' own
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert diff == []


async def test_an_event_is_stored_as_the_compact_json_it_was_written(
    store: Store, database_url: str
) -> None:
    tid = await new_thread(store, "deploy v1, please")
    await store.append(
        tid, 1, [(DoneForNow(message="done: v1"), None)], status="done", run_after=None
    )
    async with store.engine.connect() as conn:
        texts = (
            (
                await conn.exec_driver_sql(
                    "SELECT CAST(data AS TEXT) FROM events WHERE thread_id = ? ORDER BY seq"
                    if database_url.startswith("sqlite")
                    else "SELECT data::text FROM events WHERE thread_id = $1 ORDER BY seq",
                    (tid,),
                )
            )
            .scalars()
            .all()
        )
    assert texts == ['{"text":"deploy v1, please","channel":"api"}', '{"message":"done: v1"}']


async def test_the_pool_is_filled_at_once_on_postgres(pg_url: str) -> None:
    from app.store.store import POOL_SIZE

    store = Store.from_url(pg_url)
    try:
        await store.fill_pool()
        assert store.engine.pool.checkedin() == POOL_SIZE  # type: ignore[attr-defined]
        async with store.engine.connect() as conn:
            opened = await conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            )
        assert opened == POOL_SIZE
    finally:
        await store.close()
