"""Quarantine: inbound messages that can never be processed as they came (a mail nested too
deep to parse, a shape no handler takes), kept with the reason and out of the way, so that
the next message is read. A channel holds a message here; an operator lists, retries or
drops it (``relaybot intake``); ``/metrics`` counts those held.

The same content delivered again (a provider's retry, a mailbox read again after a crash)
finds its row instead of adding one: rows are keyed by channel and the content's digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.records import utcnow
from app.store.tables import inbound_quarantine as table
from app.text import clean

HELD, RELEASED, DROPPED = "held", "released", "dropped"
REASON_CHARS = 2_000


@dataclass(frozen=True)
class Quarantined:
    id: int
    channel: str
    source: str
    digest: str
    external_id: str | None
    sender: str | None
    reason: str
    size: int
    status: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    content: bytes | None = None  # read by ``get`` only


_LISTED = [c for c in table.c if c.name != "content"]


def digest_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class Quarantine:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def hold(
        self,
        *,
        channel: str,
        source: str,
        reason: str,
        content: bytes | None,
        size: int,
        digest: str | None = None,
        external_id: str | None = None,
        sender: str | None = None,
    ) -> int:
        """Hold a message (``content`` None: too large to keep, then ``digest`` names it);
        the same message held again gets its row back, held, with the newer reason."""
        if digest is None:
            assert content is not None, "a message kept or named by digest"
            digest = digest_of(content)
        now = utcnow()
        values = {
            "reason": clean(reason)[:REASON_CHARS],
            "external_id": clean(external_id)[:512] if external_id else None,
            "sender": clean(sender)[:320] if sender else None,
        }
        try:
            async with self.engine.begin() as conn:
                inserted = await conn.execute(
                    insert(table)
                    .values(
                        channel=channel,
                        source=source,
                        digest=digest,
                        content=content,
                        size=size,
                        created_at=now,
                        updated_at=now,
                        **values,
                    )
                    .returning(table.c.id)
                )
                return int(inserted.scalar_one())
        except IntegrityError:  # held before, or by another reader just now
            pass
        async with self.engine.begin() as conn:
            again = await conn.execute(
                update(table)
                .where(table.c.channel == channel, table.c.digest == digest)
                .values(status=HELD, attempts=table.c.attempts + 1, updated_at=now, **values)
                .returning(table.c.id)
            )
            return int(again.scalar_one())

    async def list(self, *, status: str | None = HELD, limit: int = 50) -> list[Quarantined]:
        """Newest first."""
        query = select(*_LISTED).order_by(table.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(table.c.status == status)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Quarantined(**row._asdict()) for row in rows]

    async def get(self, row_id: int) -> Quarantined | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id == row_id))).first()
        return None if row is None else Quarantined(**row._asdict())

    async def settle(self, row_id: int, status: str) -> bool:
        """Mark a held message released (a retry went through) or dropped; False if it is
        not held (or does not exist)."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(table)
                .where(table.c.id == row_id, table.c.status == HELD)
                .values(status=status, updated_at=utcnow())
            )
        return bool(done.rowcount)
