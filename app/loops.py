"""The loop shared by the worker and the dispatcher: claim due work, handle each item in its
own task (up to ``concurrency`` at once), then sleep until woken, until the next item is due,
or until the poll interval (the fallback when no wake-up arrives)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Generic, TypeVar

from app.store import utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClaimLoop(ABC, Generic[T]):
    name = "loop"

    def __init__(self, *, concurrency: int, poll_interval: float) -> None:
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._running = False
        self._exited = asyncio.Event()

    @abstractmethod
    async def claim(self, limit: int) -> list[T]: ...

    @abstractmethod
    async def handle(self, item: T) -> None: ...

    @abstractmethod
    async def next_due(self) -> datetime | None: ...

    async def abandon(self, items: list[T]) -> None:
        """Give back items claimed after stop() began (they will not be handled here)."""

    def wake(self) -> None:
        self._wake.set()

    def free_slots(self) -> int:
        return self.concurrency - len(self._tasks)

    def saturated(self) -> bool:
        return self.free_slots() <= 0

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        self._running = True
        try:
            await self._loop()
        finally:
            self._exited.set()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.free_slots()
            items: list[T] = []
            if free > 0:
                try:
                    items = await self.claim(free)
                except Exception:
                    log.exception("%s: claim failed; retrying", self.name)
            if self._stopping:
                await self.abandon(items)
                break
            for item in items:
                task = asyncio.create_task(self.handle(item))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if items:
                await asyncio.sleep(0)  # there may be more: claim again
            elif self.saturated():
                await self._sleep(self.poll_interval)  # until a slot frees, or a wake-up
            else:
                await self._sleep(await self._idle_seconds())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _idle_seconds(self) -> float:
        try:
            soonest = await self.next_due()
        except Exception:
            return self.poll_interval
        if soonest is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, (soonest - utcnow()).total_seconds()))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let running items finish for ``grace`` seconds, then cancel them.

        The loop itself is waited for first: a claim in flight when stop() began is given
        back (``abandon``) rather than cut off, which would leave its rows leased."""
        self._stopping = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), max(grace, 5.0))
        if self._tasks:
            remaining = max(0.0, deadline - loop.time())
            _, pending = await asyncio.wait(set(self._tasks), timeout=remaining)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
