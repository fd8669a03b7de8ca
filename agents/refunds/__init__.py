"""refunds: a customer emails a refund request; small refunds are issued at once, larger
ones after a manager approves (in Slack, or by email), and the customer gets the outcome.

The rules are code, not prompt: a refund is only ever of an order whose customer is the
thread's author, as our receiving server verified them (``EMAIL_AUTHSERV_ID``); it never
exceeds what was paid less what is refunded or on its way; and the approval threshold applies
to the order's total refunded, this refund included, so two refunds just below it do not slip
through. Booking is reserve, call, settle (``ledger.py``): no HTTP call inside a transaction.

Settings: ``REFUNDS_APPROVAL_THRESHOLD`` (in the order's currency, default 100),
``REFUNDS_PAYMENTS_WEBHOOK_URL`` (receives ``{"order_id", "amount_cents", "currency",
"reason", "thread_id"}`` with an ``Idempotency-Key``), ``REFUNDS_REQUIRE_VERIFIED_SENDER``
(default true). Orders live in the ``orders`` table: ``relaybot orders load-sample`` loads a
few.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import httpx
from pydantic import AnyHttpUrl, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from agents.refunds import ledger
from agents.refunds.ledger import orders
from app.agent import Action, Agent, Tool, ToolContext, read_settings
from app.errors import ToolError, ToolOutcomeUnknown


class RefundsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REFUNDS_", extra="ignore", frozen=True)

    approval_threshold: Decimal = Field(default=Decimal(100), ge=0)
    payments_webhook_url: AnyHttpUrl | None = None
    # Refund only to a customer our mail server authenticated (DKIM/DMARC pass). Turn off
    # only where EMAIL_AUTHSERV_ID cannot be set, knowing anyone may then write as anyone.
    require_verified_sender: bool = True


class LookUpOrder(Action):
    """Look up one of the customer's orders by its id: item, amount, currency, refunded."""

    intent: Literal["look_up_order"] = "look_up_order"
    order_id: str


class IssueRefund(Action):
    """Refund (part of) an order. Refunds above the approval threshold wait for a manager."""

    intent: Literal["issue_refund"] = "issue_refund"
    order_id: str
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2, description="e.g. 129.90")
    reason: str = Field(description="why, in a few words, for the manager and the records")


SAMPLE = [
    ("A-1001", "ana@example.net", "Rain jacket", 8900, "EUR"),
    ("A-1002", "ana@example.net", "Tent, 3 person", 34900, "EUR"),
    ("B-2001", "ben@example.org", "Hiking boots", 15900, "EUR"),
    ("B-2002", "ben@example.org", "Socks, 3 pairs", 1500, "EUR"),
]


async def load_sample(db: AsyncEngine) -> int:
    """Insert the sample orders (again: nothing changes). Returns how many there are."""
    insert = pg_insert if db.dialect.name == "postgresql" else sqlite_insert
    rows = [
        {
            "id": i,
            "customer_email": c,
            "item": item,
            "amount_cents": a,
            "currency": cur,
            "created_at": datetime.now(UTC),
        }
        for i, c, item, a, cur in SAMPLE
    ]
    async with db.begin() as conn:
        await conn.execute(insert(orders).values(rows).on_conflict_do_nothing())
    return len(rows)


def customer(ctx: ToolContext, cfg: RefundsSettings) -> str:
    """The verified address of the thread's author: the only customer it may act for."""
    who = ctx.requester
    if who is None or who.channel != "email" or not who.id:
        raise ToolError("refunds are only for customers who wrote by email")
    if cfg.require_verified_sender and not who.verified:
        raise ToolError(
            "the sender's address could not be verified, so no refund can be made; "
            "ask the customer to write from their own mail account"
        )
    return who.id.lower()


def build(settings: RefundsSettings | None = None) -> Agent:
    cfg = settings or read_settings(RefundsSettings)
    threshold = int(cfg.approval_threshold * 100)

    async def look_up(call: LookUpOrder, ctx: ToolContext) -> dict[str, object]:
        order = await ledger.find_order(ctx.db, call.order_id)
        if order is None or order.customer_email.lower() != customer(ctx, cfg).lower():
            raise ToolError(f"there is no order {call.order_id} of yours")
        return {
            "order_id": order.id,
            "item": order.item,
            "amount": f"{Decimal(order.amount_cents) / 100:.2f}",
            "currency": order.currency,
            "refunded": f"{Decimal(order.committed_cents) / 100:.2f}",
        }

    async def needs_approval(call: IssueRefund, ctx: ToolContext) -> bool:
        """Above the threshold, counting what the order was refunded already. A refund the
        tool will refuse anyway (not the customer's order, not verified) asks no one."""
        order = await ledger.find_order(ctx.db, call.order_id)
        try:
            mine = order is not None and order.customer_email.lower() == customer(ctx, cfg)
        except ToolError:
            mine = False
        if order is None or not mine:
            return False
        return order.committed_cents + int(call.amount * 100) > threshold

    async def refund(call: IssueRefund, ctx: ToolContext) -> dict[str, object]:
        if cfg.payments_webhook_url is None:
            raise ToolError("refunds are not configured: REFUNDS_PAYMENTS_WEBHOOK_URL is not set")
        held = await ledger.reserve(
            ctx.db,
            key=ctx.idempotency_key,
            order_id=call.order_id,
            customer=customer(ctx, cfg),
            amount_cents=int(call.amount * 100),
            thread_id=ctx.thread_id,
            threshold_cents=threshold,
            approved=ctx.approval is not None,
        )
        done: dict[str, object] = {
            "refunded": f"{Decimal(held.amount_cents) / 100:.2f}",
            "currency": held.order.currency,
            "order_id": held.order.id,
        }
        if held.settled:
            return done
        body = {
            "order_id": held.order.id,
            "amount_cents": held.amount_cents,
            "currency": held.order.currency,
            "reason": call.reason,
            "thread_id": ctx.thread_id,
        }
        headers = {"Idempotency-Key": ctx.idempotency_key}
        try:
            response = await ctx.http.post(
                str(cfg.payments_webhook_url), json=body, headers=headers
            )
        except httpx.ConnectError as exc:  # nothing was sent: nothing was paid
            await ledger.release(ctx.db, held.key)
            raise ToolError(f"payments unreachable: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # sent, no answer: the reservation stays
            raise ToolOutcomeUnknown(f"no answer from payments ({type(exc).__name__})") from exc
        if not response.is_success:
            await ledger.release(ctx.db, held.key)
            raise ToolError(f"payments answered {response.status_code}: {response.text[:200]}")
        await ledger.settle(ctx.db, held.key)
        return done

    return Agent(
        name="refunds",
        prompt="prompts/refunds.j2",
        description="Refunds orders; larger refunds after a manager approves.",
        prompt_vars={"threshold": f"{cfg.approval_threshold:.2f}"},
        tools=(
            Tool(LookUpOrder, look_up),
            Tool(IssueRefund, refund, approval_gate=needs_approval, idempotent=False),
        ),
    )
