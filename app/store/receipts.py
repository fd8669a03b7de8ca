"""Inbound receipts: every delivery's identity (Slack's ``event_id``, an email's Message-ID,
an API idempotency key), so that a second delivery is recognised and answered as the first
was, never applied twice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.events import StoredEvent
from app.store.records import DuplicateDelivery, Receipt, utcnow
from app.store.tables import inbound_receipts


class Receipts:
    """The store's receipts (mixed into ``Store``)."""

    engine: AsyncEngine

    async def get_receipt(self, channel: str, external_id: str) -> DuplicateDelivery | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(inbound_receipts.c.thread_id, inbound_receipts.c.response).where(
                        inbound_receipts.c.channel == channel,
                        inbound_receipts.c.external_id == external_id,
                    )
                )
            ).first()
        return None if row is None else DuplicateDelivery(row.thread_id, row.response)

    async def record_receipt(self, receipt: Receipt, thread_id: str | None = None) -> bool:
        """Record a delivery with no events (e.g. one that is ignored); False if seen before."""
        try:
            async with self.engine.begin() as conn:
                await self._insert_receipt(conn, receipt, thread_id, [], utcnow())
        except IntegrityError:
            return False
        return True

    @staticmethod
    async def _insert_receipt(
        conn: AsyncConnection,
        receipt: Receipt,
        thread_id: str | None,
        stored: list[StoredEvent],
        now: datetime,
    ) -> None:
        response = receipt.response(thread_id, stored) if receipt.response and thread_id else None
        await conn.execute(
            insert(inbound_receipts).values(
                channel=receipt.channel,
                external_id=receipt.external_id,
                thread_id=thread_id,
                response=response,
                created_at=now,
            )
        )

    async def _raise_if_duplicate(self, receipt: Receipt | None) -> None:
        if receipt is not None:
            seen = await self.get_receipt(receipt.channel, receipt.external_id)
            if seen is not None:
                raise seen
