"""Engine overhead per agent step, with a zero-latency model, on SQLite and Postgres.

    python -m benchmarks.engine_overhead [--threads-10 20] [--threads-100 5] [--skip-postgres]

A zero-latency model port (benchmarks.fakes: ``noop`` N times, then ``done_for_now``) and
the only tool returns a constant, so the wall time of ``Engine.run`` is the engine itself:
context rendering (jinja2) and token counting (litellm), pydantic validation, the projection
and one store append per tool step. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.agent import Agent
from app.context import ContextRenderer, Messages, RenderedContext, make_environment
from app.engine import Engine, EngineConfig
from app.service import Threads
from app.settings import Settings
from app.store import Store, StoredEvent
from app.store.migrate import upgrade
from app.store.store import make_engine
from benchmarks.fakes import ZeroLatencyLLM, benchbot

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


AGENT = benchbot()


class TimedRenderer(ContextRenderer):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.render_s = self.count_s = 0.0

    def render(self, agent: Agent, events: Sequence[StoredEvent]) -> RenderedContext:
        started = time.perf_counter()
        try:
            return super().render(agent, events)
        finally:
            self.render_s += time.perf_counter() - started

    def count(self, messages: Messages) -> int:
        started = time.perf_counter()
        try:
            return super().count(messages)
        finally:
            self.count_s += time.perf_counter() - started

    def count_text(self, text: str) -> int:
        started = time.perf_counter()
        try:
            return super().count_text(text)
        finally:
            self.count_s += time.perf_counter() - started


class TimedStore(Store):
    append_s = 0.0

    async def append(self, *args: Any, **kwargs: Any) -> list[StoredEvent]:
        started = time.perf_counter()
        try:
            return await super().append(*args, **kwargs)
        finally:
            self.append_s += time.perf_counter() - started


@dataclass
class Result:
    backend: str
    steps: int
    threads: int
    per_thread_ms: list[float] = field(default_factory=list)  # wall / model calls
    step_ms: list[float] = field(default_factory=list)  # between consecutive model calls
    wall_s: float = 0.0
    calls: int = 0
    render_s: float = 0.0  # jinja2 only
    count_s: float = 0.0  # litellm.token_counter
    append_s: float = 0.0


async def bench(backend: str, url: str, sizes: list[tuple[int, int]]) -> list[Result]:
    settings = Settings(database_url=url, llm_model="openai/gpt-4o-mini", step_cap=1000)
    store = TimedStore(make_engine(settings.database_url))
    llm = ZeroLatencyLLM(steps=0)
    renderer = TimedRenderer(make_environment(), settings.llm_model, settings.context_token_budget)
    agents = {AGENT.name: AGENT}
    async with httpx.AsyncClient() as http:
        config = EngineConfig(step_cap=settings.step_cap)
        engine = Engine(store, agents, llm, renderer, http, config)
        threads = Threads(store, agents, default_agent=AGENT.name, base_url="http://bench")
        results: list[Result] = []
        for steps, count in [(3, 2), *sizes]:  # the first size warms caches up, unreported
            result = Result(backend, steps, count)
            renderer.render_s = renderer.count_s = store.append_s = 0.0
            for _ in range(count):
                launched = await threads.launch(f"Run the no-op tool. steps={steps}")
                llm.calls.clear()
                started = time.perf_counter()
                await engine.run(launched["thread_id"])
                wall = time.perf_counter() - started
                if len(llm.calls) != steps + 1:  # the script went wrong, not the timing
                    raise RuntimeError(f"{len(llm.calls)} model calls for {steps} steps")
                result.wall_s += wall
                result.calls += len(llm.calls)
                result.per_thread_ms.append(wall * 1000 / len(llm.calls))
                pairs = zip(llm.calls, llm.calls[1:], strict=False)
                result.step_ms += [(b - a) * 1000 for a, b in pairs]
            result.render_s = renderer.render_s - renderer.count_s
            result.count_s, result.append_s = renderer.count_s, store.append_s
            results.append(result)
    await store.close()
    return results[1:]


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def table(results: list[Result]) -> str:
    head = (
        "| backend | steps/thread | threads | ms/step median | ms/step p99 "
        "| single step p50 | single step p99 | render | token count | appends | other |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        share = [r.render_s / r.wall_s, r.count_s / r.wall_s, r.append_s / r.wall_s]
        pct = [f"{s:.0%}" for s in (*share, 1 - sum(share))]
        lines.append(
            f"| {r.backend} | {r.steps} | {r.threads} | {statistics.median(r.per_thread_ms):.2f}"
            f" | {p99(r.per_thread_ms):.2f} | {statistics.median(r.step_ms):.2f}"
            f" | {p99(r.step_ms):.2f} | {' | '.join(pct)} |"
        )
    return "\n".join(lines)


async def admin(dsn: str, sql: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval(sql))
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads-10", type=int, default=20, help="threads of 10 tool steps")
    parser.add_argument("--threads-100", type=int, default=5, help="threads of 100 tool steps")
    parser.add_argument("--postgres-url", default=PG_ADMIN, help="admin URL (a db is created)")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    sizes = [(n, c) for n, c in ((10, args.threads_10), (100, args.threads_100)) if c > 0]

    pg_version = None
    if not args.skip_postgres:
        pg_version = asyncio.run(admin(args.postgres_url, "SHOW server_version"))
    print(f"- Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"- SQLite {sqlite3.sqlite_version}")
    print(f"- Postgres {pg_version or 'skipped'}")
    print(f"- cores: {os.cpu_count()} ({platform.machine()}, {platform.system()})")
    print("- model: scripted, in-process, zero latency; tool: returns a constant\n")

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        results += asyncio.run(bench("sqlite", url, sizes))
    if not args.skip_postgres:
        name = f"relaybot_bench_{uuid.uuid4().hex[:10]}"
        base = args.postgres_url.rpartition("/")[0]
        asyncio.run(admin(args.postgres_url, f'CREATE DATABASE "{name}"'))
        try:
            url = f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)
            upgrade(url)
            results += asyncio.run(bench("postgres", url, sizes))
        finally:
            asyncio.run(admin(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    print(table(results))
    print(
        "\nms/step: wall time of Engine.run / model calls, per thread (median, p99 over threads)."
        "\nsingle step: time between consecutive model calls (one tool step: 1 append, tool,"
        "\n  projection, render, token count), over all steps. Shares: of total Engine.run time;"
        "\n  render = jinja2 only, other = validation, projection, tool, load, event loop."
    )


if __name__ == "__main__":
    main()
