"""Fetching mail over IMAP: IDLE while connected, a poll as fallback, reconnect with backoff.

Every unseen message is taken in on its own (``intake.py``), oldest first, then flagged
\\Seen (or moved to ``IMAP_PROCESSED_FOLDER``). The handler records each Message-ID as a
receipt before the flag is set, so a crash in between only means the message is read again
and dropped as a duplicate: after a restart nothing is processed twice or skipped.

A message that can never be processed (and one over the size limit, which is not downloaded)
is held in quarantine and moved to ``IMAP_FAILED_FOLDER`` (created when first needed), so
the next one is read: one bad mail never stops the mailbox. When processing cannot happen
now (the database is down), the message stays unseen and the reader tries again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import aioimaplib

from app.settings import Settings
from channels.email.intake import HEADER_BYTES, Intake, Taken, Unavailable
from channels.email.mime import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

FETCH_UID = re.compile(rb"UID (\d+)")
FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
IDLE_SECONDS = 300.0  # re-issue IDLE well before servers drop it (RFC 2177: 29 minutes)
SIZES_PER_FETCH = 200  # UIDs per size look-up, so a long backlog fits a command line


class ImapFetcher:
    def __init__(self, settings: Settings, intake: Intake, *, poll_interval: float = 60.0) -> None:
        self.settings = settings
        self.intake = intake
        self.poll_interval = poll_interval
        self.connected = asyncio.Event()
        self.processed = 0
        self.held = 0
        self.unavailable = 0  # times processing could not happen (the database was down)

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
            except Unavailable as exc:  # the message waits, unseen, for the next round
                self.unavailable += 1
                log.warning("IMAP: cannot process mail now (%s); again in %.0fs", exc, delay)
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
        _ok(await client.select(_quoted(s.imap_folder)), "SELECT")
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
        """Take in every unseen message, oldest first, each on its own."""
        found = _ok(await client.uid_search("UNSEEN"), "SEARCH")
        uids = sorted(int(u) for line in found.lines[:1] for u in line.split())
        for start in range(0, len(uids), SIZES_PER_FETCH):
            batch = uids[start : start + SIZES_PER_FETCH]
            sizes = await _sizes(client, batch)
            for uid in batch:
                if sizes.get(uid, 0) > MAX_MESSAGE_BYTES:
                    taken = await self._hold_unread(client, uid, sizes[uid])
                else:
                    raw = await _fetch(client, uid, "BODY.PEEK[]")
                    if raw is None:
                        continue
                    taken = await self.intake.take(raw, "imap")
                await self._file(client, uid, taken)

    async def _hold_unread(self, client: aioimaplib.IMAP4, uid: int, size: int) -> Taken:
        head = await _fetch(client, uid, f"BODY.PEEK[HEADER]<0.{HEADER_BYTES}>") or b""
        limit = MAX_MESSAGE_BYTES // 1_000_000
        reason = f"too large: {size:,} bytes (the limit is {limit} MB); not downloaded"
        return await self.intake.hold_unread(head, size, "imap", reason)

    async def _file(self, client: aioimaplib.IMAP4, uid: int, taken: Taken) -> None:
        """Out of the unseen: to the failed folder if held, else as processed mail goes."""
        if taken.held is None:
            self.processed += 1
            if self.settings.imap_processed_folder:
                await _move(client, uid, self.settings.imap_processed_folder)
                return
        else:
            self.held += 1
            target = self.settings.imap_failed_folder
            try:
                if target:
                    await _move(client, uid, target)
                    return
            except Refused as exc:  # flagged instead: held mail must not come round again
                log.warning("IMAP: cannot move held mail to %s (%s); flagging it", target, exc)
        _ok(await client.uid("store", str(uid), "+FLAGS", "(\\Seen)"), "STORE")


async def _sizes(client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, int]:
    response = _ok(await client.uid("fetch", ",".join(map(str, uids)), "(RFC822.SIZE)"), "FETCH")
    sizes: dict[int, int] = {}
    for line in response.lines:
        uid, size = FETCH_UID.search(bytes(line)), FETCH_SIZE.search(bytes(line))
        if uid and size:
            sizes[int(uid.group(1))] = int(size.group(1))
    return sizes


async def _fetch(client: aioimaplib.IMAP4, uid: int, part: str) -> bytes | None:
    fetched = _ok(await client.uid("fetch", str(uid), f"({part})"), "FETCH")
    return next((bytes(x) for x in fetched.lines if isinstance(x, bytearray)), None)


async def _move(client: aioimaplib.IMAP4, uid: int, folder: str) -> None:
    response = await client.uid("move", str(uid), _quoted(folder))
    if response.result != "OK" and b"TRYCREATE" in _text(response):
        # RFC 3501: the folder does not exist yet. Made on first use, then moved into.
        created = await client.create(_quoted(folder))
        if created.result != "OK" and b"ALREADYEXISTS" not in _text(created):
            _ok(created, "CREATE")
        response = await client.uid("move", str(uid), _quoted(folder))
    _ok(response, "MOVE")


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(response: aioimaplib.Response) -> bytes:
    # bytes lines only: a bytearray is a message's literal
    return b" ".join(x for x in response.lines if isinstance(x, bytes))


def _check_open(client: aioimaplib.IMAP4) -> None:
    transport = client.protocol.transport
    if transport is None or transport.is_closing():
        raise ConnectionError("the IMAP connection was closed")


class Refused(ConnectionError):
    """The server answered NO or BAD (a reconnect is how the reader starts over)."""


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        detail = _text(response)[:200]
        raise Refused(f"{what} failed: {detail.decode(errors='replace')}")
    return response


async def _close(client: aioimaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):  # it is going away anyway
        await asyncio.wait_for(client.logout(), 5)
