"""Taking one inbound message in, on its own: processed, held, or left for later.

A message that fails because of what it is (``MailRejected`` from the parser, a value the
database refuses, any error not known to pass) would fail again on every try, so it is held in
quarantine with the reason (``app/store/quarantine.py``) and the next message is read. One
that fails because something else is down (the database, a connection) is raised as
:class:`Unavailable`: it is left where it is and tried again later, never quarantined.
The IMAP reader and the webhooks answer from what ``take`` says.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
from sqlalchemy import exc as sa

from app.errors import VersionConflict
from app.store.quarantine import Quarantine, digest_of
from channels.email.inbound import EmailInbound, Outcome
from channels.email.parse import InboundMail, MailRejected
from channels.email.parsing import Parser

log = logging.getLogger(__name__)

# Postgres error classes that say nothing about the message: a connection exception,
# insufficient resources, operator intervention (shutdown, statement timeout), a transaction
# rolled back (serialization, deadlock), a system error.
TRANSIENT_SQLSTATES = ("08", "40", "53", "57", "58")
HEADER_BYTES = 65_536  # what is read of an unreadable message to list it: its top headers
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


class Unavailable(Exception):
    """Processing cannot happen now for a reason outside the message; try it again later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Taken:
    """What became of a message: an ``outcome``, or held in quarantine (``held``: its id,
    ``reason``: why, as a sender of the message may be told)."""

    outcome: Outcome | None = None
    held: int | None = None
    reason: str | None = None


class Intake:
    def __init__(self, inbound: EmailInbound, quarantine: Quarantine, parser: Parser) -> None:
        self.inbound = inbound
        self.quarantine = quarantine
        self.parser = parser

    async def take(self, raw: bytes, source: str) -> Taken:
        """Process ``raw``; hold it if it can never be processed; Unavailable if not now."""
        mail: InboundMail | None = None
        postmark = source == "postmark"  # the content is Postmark's JSON, not MIME
        try:
            mail = await self.parser.parse(raw, postmark=postmark)
            return Taken(outcome=await self.inbound.handle(mail, raw))
        except asyncio.CancelledError:
            raise
        except MailRejected as exc:
            reason = f"unreadable: {exc.reason}"
            mail = None if postmark else await self._headers_of(raw[:HEADER_BYTES])
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
            # Not known to pass: holding it costs a retry later; retrying it now would stop
            # every message behind it.
            log.exception("email: processing a message failed; it is held")
            reason = f"failed: {type(exc).__name__}: {exc}"
            # The sender of the request hears the kind of failure only (no SQL, no values).
            return await self.hold(raw, source, reason, mail, said=f"failed: {type(exc).__name__}")
        return await self.hold(raw, source, reason, mail)

    async def hold_unread(self, head: bytes, size: int, source: str, reason: str) -> Taken:
        """Hold a message that was not downloaded (too large), named by its head."""
        mail = await self._headers_of(head)
        digest = digest_of(head + b"\0%d" % size)
        return await self.hold(None, source, reason, mail, size=size, digest=digest)

    async def _headers_of(self, head: bytes) -> InboundMail | None:
        """Who sent a message that cannot be read, and its ID, from its top headers only
        (for the quarantine's listing); None if even those cannot be read."""
        blank = _BLANK_LINE.search(head)
        try:
            return await self.parser.parse(head[: blank.start()] if blank else head)
        except MailRejected:
            return None

    async def hold(
        self,
        raw: bytes | None,
        source: str,
        reason: str,
        mail: InboundMail | None = None,
        *,
        size: int | None = None,
        digest: str | None = None,
        said: str | None = None,
    ) -> Taken:
        """Hold a message with ``reason``; ``said``: what the answer says of it, if shorter."""
        try:
            held = await self.quarantine.hold(
                channel="email",
                source=source,
                reason=reason,
                content=raw,
                size=len(raw or b"") if size is None else size,
                digest=digest,
                external_id=mail.message_id if mail else None,
                sender=mail.sender if mail else None,
            )
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
            raise
        log.warning("email: message held in quarantine as %d: %s", held, reason[:300])
        return Taken(held=held, reason=said or reason)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a fault that passes: a connection or the
    database being down or busy, rather than something about the message."""
    for error in _chain(exc):
        if isinstance(error, OSError | TimeoutError | VersionConflict):
            return True
        if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(
            error,
            sa.OperationalError | sa.InterfaceError | sa.DisconnectionError | sa.TimeoutError,
        ):
            return True
        if isinstance(error, asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
            return True
        state = getattr(error, "sqlstate", None)
        if isinstance(state, str) and state.startswith(TRANSIENT_SQLSTATES):
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        orig = getattr(error, "orig", None)  # what SQLAlchemy wrapped
        todo += [error.__cause__, error.__context__, orig if isinstance(orig, Exception) else None]
