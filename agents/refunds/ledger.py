"""The refunds agent's own tables and the one way money moves: reserve, call, settle.

``orders`` (created by core migration 0002, before agents had schemas of their own) and
``refunds`` (one row per refund call, keyed by the call's idempotency key) belong to this
agent; its migrations live in ``agents/refunds/migrations`` as an alembic branch of their own.

A refund is booked in three steps, and no HTTP call is ever made inside a transaction:
``reserve`` checks, in one transaction with the order's row locked, that the order is the
requester's, that what is refunded and reserved plus this refund stays within what was paid,
and that it stays within the approval threshold unless a person approved this very call; the
payment call goes out with the key as ``Idempotency-Key``; ``settle`` books it, or
``release`` frees the reservation when the payment provider said no. A call whose outcome is
unknown keeps its reservation: the money stays counted until a person settles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import ToolError
from app.store.tables import UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_email", String(320), nullable=False),
    Column("item", String(255), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("refunded_cents", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "customer_email"),
)

refunds = Table(
    "refunds",
    metadata,
    Column("key", String(100), primary_key=True),  # the call's idempotency key
    Column("order_id", String(64), nullable=False),
    Column("thread_id", String(36), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # reserved, settled, released
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "order_id", "status"),
)

RESERVED, SETTLED, RELEASED = "reserved", "settled", "released"


@dataclass(frozen=True)
class Schema:
    """This agent's tables, for migrations and the schema check (``relaybot.schemas``)."""

    metadata: MetaData
    versions: Path


schema = Schema(metadata, Path(__file__).parent / "migrations")


@dataclass(frozen=True)
class Order:
    id: str
    customer_email: str
    item: str
    amount_cents: int
    currency: str
    refunded_cents: int
    reserved_cents: int

    @property
    def committed_cents(self) -> int:
        """Refunded, or on its way: what no further refund may count on."""
        return self.refunded_cents + self.reserved_cents


@dataclass(frozen=True)
class Reservation:
    key: str
    order: Order
    amount_cents: int
    settled: bool  # booked already: a re-run of a call that went through


async def find_order(db: AsyncEngine | AsyncConnection, order_id: str) -> Order | None:
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            return await find_order(conn, order_id)
    row = (await db.execute(select(orders).where(orders.c.id == order_id))).first()
    if row is None:
        return None
    reserved = await db.scalar(
        select(func.coalesce(func.sum(refunds.c.amount_cents), 0)).where(
            refunds.c.order_id == order_id, refunds.c.status == RESERVED
        )
    )
    return Order(
        row.id,
        row.customer_email,
        row.item,
        row.amount_cents,
        row.currency,
        row.refunded_cents,
        int(reserved or 0),
    )


async def reserve(
    db: AsyncEngine,
    *,
    key: str,
    order_id: str,
    customer: str,
    amount_cents: int,
    thread_id: str,
    threshold_cents: int,
    approved: bool,
) -> Reservation:
    """Check the refund against the order and hold its amount, in one transaction with the
    order's row locked (so two refunds of one order cannot both pass the checks)."""
    async with db.begin() as conn:
        if db.dialect.name == "postgresql":
            await conn.execute(select(orders.c.id).where(orders.c.id == order_id).with_for_update())
        order = await find_order(conn, order_id)
        if order is None or order.customer_email.lower() != customer.lower():
            raise ToolError(f"there is no order {order_id} of yours")
        held = (await conn.execute(select(refunds).where(refunds.c.key == key))).first()
        if held is not None and held.status in (RESERVED, SETTLED):
            # The same call again (a retry after a crash): the same reservation, once.
            return Reservation(key, order, held.amount_cents, held.status == SETTLED)
        left = order.amount_cents - order.committed_cents
        if amount_cents > left:
            raise ToolError(f"the refund exceeds what is left on the order ({left / 100:.2f})")
        if order.committed_cents + amount_cents > threshold_cents and not approved:
            raise ToolError(
                "refunds of this order would pass the approval threshold: a manager must "
                "approve this refund first"
            )
        now = datetime.now(UTC)
        await conn.execute(
            insert(refunds).values(
                key=key,
                order_id=order_id,
                thread_id=thread_id,
                amount_cents=amount_cents,
                status=RESERVED,
                created_at=now,
                updated_at=now,
            )
        )
        return Reservation(key, order, amount_cents, False)


async def settle(db: AsyncEngine, key: str) -> None:
    """The payment went through: book it on the order."""
    async with db.begin() as conn:
        held = (await conn.execute(select(refunds).where(refunds.c.key == key))).first()
        if held is None or held.status != RESERVED:
            return
        await conn.execute(
            update(refunds)
            .where(refunds.c.key == key)
            .values(status=SETTLED, updated_at=datetime.now(UTC))
        )
        await conn.execute(
            update(orders)
            .where(orders.c.id == held.order_id)
            .values(refunded_cents=orders.c.refunded_cents + held.amount_cents)
        )


async def release(db: AsyncEngine, key: str) -> None:
    """The payment provider said no: the amount is free again."""
    async with db.begin() as conn:
        await conn.execute(
            update(refunds)
            .where(refunds.c.key == key, refunds.c.status == RESERVED)
            .values(status=RELEASED, updated_at=datetime.now(UTC))
        )
