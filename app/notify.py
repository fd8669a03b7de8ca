"""Postgres LISTEN/NOTIFY wake-ups: another process appended something for us to do.

One dedicated asyncpg connection listens; on loss it reconnects with backoff. Missing a
notification only costs latency: the loops still poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

log = logging.getLogger(__name__)


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class PgListener:
    def __init__(self, dsn: str, handlers: Mapping[str, Callable[[], None]]) -> None:
        self.dsn = dsn
        self.handlers = dict(handlers)
        self.connected = asyncio.Event()

    async def run(self) -> None:
        delay = 0.5
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            try:
                conn.add_termination_listener(_setter(lost))
                for channel, handler in self.handlers.items():
                    await conn.add_listener(channel, _callback(handler))
                self.connected.set()
                for handler in self.handlers.values():
                    handler()  # catch up on anything sent while we were not listening
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            finally:
                self.connected.clear()
                if not conn.is_closed():
                    await conn.close()


def _setter(event: asyncio.Event) -> Callable[..., None]:
    def on_terminate(*_: Any) -> None:
        event.set()

    return on_terminate


def _callback(handler: Callable[[], None]) -> Callable[..., None]:
    def on_notify(*_: Any) -> None:
        handler()

    return on_notify
