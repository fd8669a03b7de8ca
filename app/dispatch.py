"""The dispatcher: sends outbox rows through the channel senders, with retries.

Backoff is exponential with full jitter, or the provider's ``Retry-After`` when it gives one.
A row that fails ``max_attempts`` times, or fails permanently, is marked dead: it shows in
``relaybot threads show`` and never blocks other rows. The provider's reference (a Slack
``ts``, an email Message-ID) is recorded right after the send, which keeps the window where
a crash can cause a second send to one round trip to the database.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from app.errors import SendFailed
from app.loops import ClaimLoop
from app.metrics import OUTBOX_SENDS
from app.store import utcnow
from app.store.outbox import Outbox, OutboxRow

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def send(self, row: OutboxRow) -> str | None:
        """Deliver the row; return the provider's reference; raise SendFailed."""
        ...


class Dispatcher(ClaimLoop[OutboxRow]):
    name = "dispatcher"

    def __init__(
        self,
        outbox: Outbox,
        senders: Mapping[str, Sender],
        *,
        concurrency: int = 8,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        backoff_max: float = 600.0,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(concurrency=concurrency, poll_interval=poll_interval)
        self.outbox = outbox
        self.senders = senders
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.lease = lease
        self.rng = rng or random.Random()

    async def claim(self, limit: int) -> list[OutboxRow]:
        return await self.outbox.claim(limit=limit, lease=self.lease)

    async def next_due(self) -> datetime | None:
        return await self.outbox.next_due()

    async def abandon(self, items: list[OutboxRow]) -> None:
        for row in items:
            await self.outbox.failed(row, "not sent: shutting down", retry_at=utcnow())

    def backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return self.rng.uniform(ceiling / 2, ceiling)

    async def handle(self, item: OutboxRow) -> None:
        sender = self.senders.get(item.channel)
        try:
            if sender is None:
                raise SendFailed(f"no sender for channel {item.channel!r}", permanent=True)
            ref = await sender.send(item)
        except SendFailed as exc:
            await self._failed(item, exc)
        except Exception as exc:
            log.exception("dispatcher: sending outbox row %s crashed", item.id)
            await self._failed(item, SendFailed(f"{type(exc).__name__}: {exc}"))
        else:
            await self.outbox.sent(item, ref)
            OUTBOX_SENDS.labels(item.channel, "sent").inc()

    async def _failed(self, row: OutboxRow, exc: SendFailed) -> None:
        if exc.permanent or row.attempts >= self.max_attempts:
            log.error(
                "outbox row %s is dead after %d attempts: %s", row.id, row.attempts, exc.message
            )
            await self.outbox.failed(row, exc.message, retry_at=None)
            OUTBOX_SENDS.labels(row.channel, "dead").inc()
            return
        delay = exc.retry_after if exc.retry_after is not None else self.backoff(row.attempts)
        log.warning(
            "outbox row %s: attempt %d failed (%s); retry in %.1fs",
            row.id,
            row.attempts,
            exc.message,
            delay,
        )
        await self.outbox.failed(row, exc.message, retry_at=utcnow() + timedelta(seconds=delay))
        OUTBOX_SENDS.labels(row.channel, "retry").inc()
