"""refunds: a customer emails a refund request; small refunds are issued at once, larger
ones after a manager approves (in Slack, or by email), and the customer gets the outcome.

Settings: ``REFUNDS_APPROVAL_THRESHOLD`` (in the order's currency, default 100: a refund
above it needs approval) and ``REFUNDS_PAYMENTS_WEBHOOK_URL`` (receives
``{"order_id", "amount_cents", "currency", "reason", "thread_id"}``). Orders live in the
``orders`` table: ``relaybot orders load-sample`` loads a few.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import httpx
from pydantic import AnyHttpUrl, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.agent import Action, Agent, Tool, ToolContext, read_settings
from app.errors import ToolError, ToolOutcomeUnknown
from app.store.tables import orders


class RefundsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REFUNDS_", extra="ignore", frozen=True)

    approval_threshold: Decimal = Field(default=Decimal(100), ge=0)
    payments_webhook_url: AnyHttpUrl | None = None


class LookUpOrder(Action):
    """Look up an order by its id: item, amount, currency, customer, refunded so far."""

    intent: Literal["look_up_order"] = "look_up_order"
    order_id: str


class IssueRefund(Action):
    """Refund (part of) an order. Refunds above the approval threshold wait for a manager."""

    intent: Literal["issue_refund"] = "issue_refund"
    order_id: str
    amount: Decimal = Field(gt=0, description="in the order's currency, e.g. 129.90")
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


async def look_up(call: LookUpOrder, ctx: ToolContext) -> dict[str, object]:
    async with ctx.db.connect() as conn:
        row = (await conn.execute(select(orders).where(orders.c.id == call.order_id))).first()
    if row is None:
        raise ToolError(f"no order {call.order_id}")
    return {
        "order_id": row.id,
        "item": row.item,
        "customer": row.customer_email,
        "amount": f"{Decimal(row.amount_cents) / 100:.2f}",
        "currency": row.currency,
        "refunded": f"{Decimal(row.refunded_cents) / 100:.2f}",
    }


def build(settings: RefundsSettings | None = None) -> Agent:
    cfg = settings or read_settings(RefundsSettings)

    async def refund(call: IssueRefund, ctx: ToolContext) -> dict[str, object]:
        if cfg.payments_webhook_url is None:
            raise ToolError("refunds are not configured: REFUNDS_PAYMENTS_WEBHOOK_URL is not set")
        cents = int(call.amount * 100)
        async with ctx.db.begin() as conn:  # check and book the refund in one transaction
            row = (await conn.execute(select(orders).where(orders.c.id == call.order_id))).first()
            if row is None:
                raise ToolError(f"no order {call.order_id}")
            if row.refunded_cents + cents > row.amount_cents:
                left = Decimal(row.amount_cents - row.refunded_cents) / 100
                raise ToolError(f"refund exceeds what is left on the order ({left:.2f})")
            await conn.execute(
                update(orders)
                .where(orders.c.id == call.order_id)
                .values(refunded_cents=orders.c.refunded_cents + cents)
            )
            body = {
                "order_id": call.order_id,
                "amount_cents": cents,
                "currency": row.currency,
                "reason": call.reason,
                "thread_id": ctx.thread_id,
            }
            try:
                response = await ctx.http.post(str(cfg.payments_webhook_url), json=body)
            except httpx.ConnectError as exc:
                raise ToolError(f"payments unreachable: {type(exc).__name__}") from exc
            except httpx.HTTPError as exc:
                raise ToolOutcomeUnknown(f"no answer from payments ({type(exc).__name__})") from exc
            if not response.is_success:
                raise ToolError(f"payments answered {response.status_code}: {response.text[:200]}")
        return {
            "refunded": f"{call.amount:.2f}",
            "currency": row.currency,
            "order_id": call.order_id,
        }

    return Agent(
        name="refunds",
        prompt="prompts/refunds.j2",
        description="Refunds orders; larger refunds after a manager approves.",
        prompt_vars={"threshold": f"{cfg.approval_threshold:.2f}"},
        tools=(
            Tool(LookUpOrder, look_up),
            Tool(
                IssueRefund,
                refund,
                needs_approval=lambda call: call.amount > cfg.approval_threshold,
                idempotent=False,
            ),
        ),
    )
