"""Prometheus metrics: what the process counts as it runs, and what the database shows.

Counters and histograms live in the process (one set per container; Prometheus sums them
across replicas). Outbox depth, threads waiting on people and inbound messages held in
quarantine are read from the database at scrape time, so every replica reports the same,
true figure.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from app.store import Store, utcnow
from app.store.quarantine import HELD
from app.store.tables import UTCDateTime, events, inbound_quarantine, outbox, threads

__all__ = ["CONTENT_TYPE_LATEST", "exposition"]

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

HTTP_SECONDS = Histogram(
    "relaybot_http_request_seconds",
    "Time to answer an HTTP request (webhooks: Slack events, email, the API).",
    ["method", "route", "status"],
    buckets=_FAST,
)
STEPS = Counter(
    "relaybot_steps_total",
    "Engine steps taken, by agent and what the step did.",
    ["agent", "kind"],
)
STEP_SECONDS = Histogram(
    "relaybot_step_seconds",
    "Time of one engine step, the model call or tool included.",
    ["agent", "kind"],
    buckets=_SLOW,
)
LLM_SECONDS = Histogram(
    "relaybot_llm_request_seconds",
    "Latency of model calls, by model and outcome.",
    ["model", "outcome"],
    buckets=_SLOW,
)
LLM_TOKENS = Counter(
    "relaybot_llm_tokens_total",
    "Tokens sent to (prompt) and received from (completion) the model.",
    ["model", "kind"],
)
LLM_COST = Counter(
    "relaybot_llm_cost_usd_total",
    "Cost of model calls in US dollars, from litellm's price map (0 for unknown models).",
    ["model"],
)
OUTBOX_SENDS = Counter(
    "relaybot_outbox_sends_total",
    "Attempts to deliver outbound messages, by channel and outcome (sent, retry, dead).",
    ["channel", "outcome"],
)


_WAITING = ("awaiting_approval", "awaiting_response")
# The events that leave a thread waiting on a person; the latest one started the wait.
_ASKS = ("approval_requested", "information_requested", "escalated")


async def _database_families(store: Store) -> list[GaugeMetricFamily]:
    now = utcnow()
    async with store.engine.connect() as conn:
        by_status = {
            status: int(n)
            for status, n in await conn.execute(
                select(outbox.c.status, func.count()).group_by(outbox.c.status)
            )
        }
        asked = (
            select(func.max(events.c.created_at))
            .where(events.c.thread_id == threads.c.id, events.c.type.in_(_ASKS))
            .scalar_subquery()
        )
        open_asks = (
            select(threads.c.status, asked.label("asked"))
            .where(threads.c.status.in_(_WAITING))
            .subquery()
        )
        waiting = [
            (status, int(n), oldest)
            for status, n, oldest in await conn.execute(
                select(
                    open_asks.c.status,
                    func.count(),
                    func.min(open_asks.c.asked, type_=UTCDateTime()),
                ).group_by(open_asks.c.status)
            )
        ]
        quarantined = {
            channel: int(n)
            for channel, n in await conn.execute(
                select(inbound_quarantine.c.channel, func.count())
                .where(inbound_quarantine.c.status == HELD)
                .group_by(inbound_quarantine.c.channel)
            )
        }
    depth = GaugeMetricFamily(
        "relaybot_outbox_rows",
        "Outbound messages by status (pending, sent, dead).",
        labels=["status"],
    )
    for status in ("pending", "sent", "dead"):
        depth.add_metric([status], by_status.get(status, 0))
    count = GaugeMetricFamily(
        "relaybot_threads_waiting", "Threads waiting on a person.", labels=["status"]
    )
    age = GaugeMetricFamily(
        "relaybot_threads_waiting_oldest_seconds",
        "How long the longest-waiting thread has waited on a person.",
        labels=["status"],
    )
    found = {status: (n, oldest) for status, n, oldest in waiting}
    for status in _WAITING:
        n, oldest = found.get(status, (0, None))
        count.add_metric([status], n)
        age.add_metric([status], _seconds_since(oldest, now))
    held = GaugeMetricFamily(
        "relaybot_inbound_quarantined",
        "Inbound messages held because they cannot be processed (relaybot intake list).",
        labels=["channel"],
    )
    for channel, n in sorted(quarantined.items()):
        held.add_metric([channel], n)
    return [depth, count, age, held]


def _seconds_since(then: datetime | None, now: datetime) -> float:
    if then is None:
        return 0.0
    return max(0.0, (now - then).total_seconds())


class _Families:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


async def exposition(store: Store) -> bytes:
    """The text Prometheus scrapes: the process's metrics, then the database's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(await _database_families(store)))
    return generate_latest(REGISTRY) + generate_latest(registry)
