"""The worker: claims runnable threads and steps them with the engine.

Claims are leases in the ``threads`` table (``FOR UPDATE SKIP LOCKED`` on Postgres), so any
number of workers share one database and a thread is stepped by one of them at a time. A
heartbeat renews the leases of threads being stepped; a dead worker's leases expire and
another worker takes its threads over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta

from app.engine import Engine
from app.loops import ClaimLoop
from app.store import Store

log = logging.getLogger(__name__)

_CLAIMING = ""  # in Worker._first from an answer's wake-up to its claim (no thread's id)


def worker_name() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker(ClaimLoop[str]):
    """``concurrency`` threads at once, plus ``urgent_slots`` kept for threads a person is
    waiting on, so an answer is picked up at once even behind a backlog.

    A thread claimed into an urgent slot also goes first on this process's event loop: the
    other threads wait before their next step until it is idle, for ``urgent_hold`` seconds
    at most. With every slot busy, the loop would otherwise share its time among all of
    them, and the answered thread's next step would take many times its own length."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        concurrency: int = 16,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 5.0,
        urgent_slots: int = 2,
        urgent_hold: float = 0.25,
        name: str | None = None,
    ) -> None:
        super().__init__(concurrency=concurrency, poll_interval=poll_interval)
        self.store = store
        self.engine = engine
        self.lease = lease
        self.urgent_slots = urgent_slots
        self.name = name or worker_name()
        self._active: set[str] = set()
        self._urgent: set[str] = set()  # claimed into the urgent slots
        self.urgent_hold = urgent_hold
        self._first: set[str] = set()  # urgent threads the others wait for
        self._way_clear = asyncio.Event()  # set while _first is empty
        self._way_clear.set()
        self._answered = False  # an answer's wake-up came since the last claim

    async def run(self) -> None:
        log.info("worker %s started (concurrency %d)", self.name, self.concurrency)
        self._heartbeat_task = asyncio.create_task(self._heartbeat())
        await super().run()

    async def stop(self, grace: float = 10.0) -> None:
        """Finish or release the current steps; leases are renewed until they are done."""
        try:
            await super().stop(grace)
        finally:
            task = getattr(self, "_heartbeat_task", None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def abandon(self, items: list[str]) -> None:
        for item in items:
            self._active.discard(item)
            self._urgent.discard(item)
            await self.store.release(item, self.name, idle_at_version=None, retry_in=timedelta(0))

    def _normal_free(self) -> int:
        return self.concurrency - (len(self._active) - len(self._urgent))

    def free_slots(self) -> int:
        return self._normal_free() + self.urgent_slots - len(self._urgent)

    def saturated(self) -> bool:
        return self._normal_free() <= 0

    async def claim(self, limit: int) -> list[str]:
        """Threads a person answered first, into the urgent slots (after an answer's wake-up,
        or while every normal slot is busy), then as many as the normal slots take."""
        claimed: list[str] = []
        answered, self._answered = self._answered, False
        try:
            urgent_free = self.urgent_slots - len(self._urgent)
            if urgent_free > 0 and (answered or self.saturated()):
                urgent = await self.store.claim(
                    self.name, lease=self.lease, limit=urgent_free, urgent_only=True
                )
                self._urgent.update(urgent)
                self._active.update(urgent)
                self._go_first(urgent)
                claimed += urgent
            if not self.saturated():
                normal = await self.store.claim(
                    self.name, lease=self.lease, limit=self._normal_free()
                )
                self._active.update(normal)
                claimed += normal
        finally:
            self._step_aside(_CLAIMING)
        return claimed

    def answered(self) -> None:
        """A person answered a thread: it is claimed first, and the threads being stepped
        wait at their next step from now on, not only once it has been claimed."""
        self._answered = True
        if self._active:
            self._go_first([_CLAIMING])
        self.wake()

    def _go_first(self, items: list[str]) -> None:
        if not items:
            return
        self._first.update(items)
        self._way_clear.clear()
        loop = asyncio.get_running_loop()
        for item in items:
            loop.call_later(self.urgent_hold, self._step_aside, item)

    def _step_aside(self, item: str) -> None:
        self._first.discard(item)
        if not self._first:
            self._way_clear.set()

    async def _pace(self) -> None:
        if not self._way_clear.is_set():
            await self._way_clear.wait()

    async def next_due(self) -> datetime | None:
        return await self.store.next_run_after()

    async def handle(self, item: str) -> None:
        idle_at: int | None = None
        run_after: datetime | None = None
        retry_in = timedelta(seconds=30)
        try:
            pace = None if item in self._first else self._pace
            result = await self.engine.run(item, pace)
            idle_at, run_after = result.version, result.run_after
        except asyncio.CancelledError:
            retry_in = timedelta(0)  # shut down mid-step: any worker may take it at once
            raise
        except Exception:
            log.exception("worker %s: stepping thread %s failed", self.name, item)
        finally:
            self._active.discard(item)
            self._urgent.discard(item)
            self._step_aside(item)
            try:
                await asyncio.shield(
                    self.store.release(
                        item,
                        self.name,
                        idle_at_version=idle_at,
                        run_after=run_after,
                        retry_in=retry_in,
                    )
                )
            except Exception:
                log.exception("worker %s: could not release %s; its lease expires", self.name, item)

    async def _heartbeat(self) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.renew(self.name, sorted(self._active), lease=self.lease)
            except Exception:
                log.exception("worker %s: lease renewal failed", self.name)
