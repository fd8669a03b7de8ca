"""Fetching mail over IMAP: IDLE while connected, a poll as fallback, reconnect with backoff.

Every unseen message is handed to the inbound handler, then flagged \\Seen (or moved to
``IMAP_PROCESSED_FOLDER``). The handler records each Message-ID as a receipt before the flag
is set, so a crash in between only means the message is read again and dropped as a duplicate:
after a restart nothing is processed twice or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

import aioimaplib

from app.settings import Settings

log = logging.getLogger(__name__)

FETCH_UID = re.compile(rb"UID (\d+)")
IDLE_SECONDS = 300.0  # re-issue IDLE well before servers drop it (RFC 2177: 29 minutes)


class ImapFetcher:
    def __init__(
        self,
        settings: Settings,
        handle: Callable[[bytes], Awaitable[object]],
        *,
        poll_interval: float = 60.0,
    ) -> None:
        self.settings = settings
        self.handle = handle
        self.poll_interval = poll_interval
        self.connected = asyncio.Event()
        self.processed = 0

    async def run(self) -> None:
        delay = 1.0
        while True:
            client: aioimaplib.IMAP4 | None = None
            try:
                client = await self._connect()
                self.connected.set()
                delay = 1.0
                await self._serve(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, server error: back off and reconnect
                log.warning("IMAP: %s; reconnecting in %.0fs", exc or type(exc).__name__, delay)
            finally:
                self.connected.clear()
                if client is not None:
                    await _close(client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _connect(self) -> aioimaplib.IMAP4:
        s = self.settings
        cls = aioimaplib.IMAP4_SSL if s.imap_tls else aioimaplib.IMAP4
        client = cls(host=s.imap_host, port=s.imap_port, timeout=30)
        await client.wait_hello_from_server()
        _ok(await client.login(s.imap_username, s.imap_password), "LOGIN")
        _ok(await client.select(s.imap_folder), "SELECT")
        return client

    async def _serve(self, client: aioimaplib.IMAP4) -> None:
        idle = client.has_capability("IDLE")
        # A dropped connection does not wake a waiting IDLE, so IDLE is re-issued every few
        # poll intervals and the connection checked in between.
        cycle = min(IDLE_SECONDS, max(self.poll_interval * 6, 1.0))
        while True:
            await self.drain(client)
            if idle:
                waiting = await client.idle_start(timeout=cycle + 30)
                with contextlib.suppress(TimeoutError):
                    await client.wait_server_push(timeout=cycle)
                _check_open(client)
                client.idle_done()
                await asyncio.wait_for(waiting, 10)
            else:
                await asyncio.sleep(self.poll_interval)
                _check_open(client)

    async def drain(self, client: aioimaplib.IMAP4) -> None:
        """Handle every unseen message, oldest first."""
        found = _ok(await client.uid_search("UNSEEN"), "SEARCH")
        uids = [int(u) for line in found.lines[:1] for u in line.split()]
        for uid in sorted(uids):
            fetched = _ok(await client.uid("fetch", str(uid), "(BODY.PEEK[])"), "FETCH")
            raw = next((bytes(x) for x in fetched.lines if isinstance(x, bytearray)), None)
            if raw is None:
                continue
            await self.handle(raw)
            self.processed += 1
            target = self.settings.imap_processed_folder
            if target:
                _ok(await client.uid("move", str(uid), target), "MOVE")
            else:
                _ok(await client.uid("store", str(uid), "+FLAGS", "(\\Seen)"), "STORE")


def _check_open(client: aioimaplib.IMAP4) -> None:
    transport = client.protocol.transport
    if transport is None or transport.is_closing():
        raise ConnectionError("the IMAP connection was closed")


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        detail = b" ".join(x for x in response.lines if isinstance(x, bytes))[:200]
        raise ConnectionError(f"{what} failed: {detail.decode(errors='replace')}")
    return response


async def _close(client: aioimaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):  # it is going away anyway
        await asyncio.wait_for(client.logout(), 5)
