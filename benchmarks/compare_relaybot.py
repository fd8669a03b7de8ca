"""relaybot's side of ``benchmarks.compare``: the agent, its scripted model, and the runs.

Engine runs step threads in this process with ``Engine.run`` on the normal Postgres store, as
``benchmarks.engine_overhead`` does; load runs use real ``relaybot worker`` processes, as
``benchmarks.workers`` does, with the answers given through ``Threads.respond_approval``.

EXTRA_AGENTS=benchmarks.compare_relaybot:comparebot DEFAULT_AGENT=comparebot
LLM_FACTORY=benchmarks.compare_relaybot:scripted_llm BENCH_ARRIVALS=/tmp/arrivals
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import os
import time
from collections.abc import Sequence
from typing import Literal

import asyncpg
import httpx
from pydantic import Field

from app.agent import Action, Agent, Tool, ToolContext
from app.context import make_environment
from app.engine import Engine, EngineConfig
from app.llm import LLM, LiteLLM, LLMReply
from app.policy import Principal
from app.service import Threads
from app.settings import Settings, load_settings
from app.store.migrate import upgrade
from app.store.store import make_engine
from app.web import runtime
from benchmarks.compare_common import (
    CTX,
    DEPLOY_DOC,
    DEPLOYED,
    PROBE,
    ArrivalLog,
    EngineRun,
    Footprint,
    LoadRun,
    Mode,
    fresh_database,
    next_step,
    probe_key,
    task,
    wanted_steps,
)
from benchmarks.engine_overhead import TimedRenderer, TimedStore
from benchmarks.fakes import Noop, noop
from benchmarks.workers import Procs, env_for, until

AGENT_SPEC = "benchmarks.compare_relaybot:comparebot"
FACTORY_SPEC = "benchmarks.compare_relaybot:scripted_llm"
MODEL = "openai/test-model"
TOKEN_BUDGET = 8000  # Settings' default

BENCH = Principal("operator", "bench", "benchmark")  # who approves in the runs


class Deploy(Action):
    __doc__ = DEPLOY_DOC

    intent: Literal["deploy"] = "deploy"
    tag: str = Field(description="the git tag to deploy")


async def deploy(action: Deploy, ctx: ToolContext) -> str:
    return DEPLOYED


def comparebot() -> Agent:
    tools = (Tool(Noop, noop), Tool(Deploy, deploy, needs_approval=True, idempotent=False))
    return Agent(name="comparebot", prompt="prompts/base.j2", tools=tools, step_cap=1000)


ACTIONS = {
    "noop": {"intent": "noop"},
    "deploy": {"intent": "deploy", "tag": "v1"},
    "done": {"intent": "done_for_now", "message": "done"},
}


class ScriptedLLM:
    """The zero-latency model behind relaybot's LLM port, following the shared script."""

    def __init__(self, arrivals: ArrivalLog | None = None) -> None:
        self.arrivals = arrivals
        self.decide_s = 0.0  # time spent in here: the model's own time

    async def choose(self, messages: list[dict[str, str]], agent: Agent) -> LLMReply:
        started = time.perf_counter()
        thread = messages[-1]["content"]
        noops, deployed = thread.count("<noop_result>"), "<deploy_result>" in thread
        step = next_step(wanted_steps(thread), noops, deployed)
        if step == "done" and self.arrivals is not None and (probe := PROBE.search(thread)):
            self.arrivals.record(probe.group(0))
        reply = LLMReply(action=dict(ACTIONS[step]), model="scripted", mode="fake", latency_ms=0)
        self.decide_s += time.perf_counter() - started
        return reply


def scripted_llm(settings: Settings) -> ScriptedLLM:
    """LLM_FACTORY for worker processes."""
    path = os.environ.get("BENCH_ARRIVALS")
    return ScriptedLLM(ArrivalLog(path) if path else None)


class TimedLLM:
    """Records when each model request starts, and the time spent in the model call."""

    def __init__(self, inner: LLM) -> None:
        self.inner = inner
        self.calls: list[float] = []
        self.client_s = 0.0

    async def choose(self, messages: list[dict[str, str]], agent: Agent) -> LLMReply:
        started = time.perf_counter()
        self.calls.append(started)
        try:
            return await self.inner.choose(messages, agent)
        finally:
            self.client_s += time.perf_counter() - started


def asyncpg_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


def model_for(mode: Mode, llm_base: str | None) -> ScriptedLLM | LiteLLM:
    if mode == "fake":
        return ScriptedLLM()
    return LiteLLM(MODEL, api_base=llm_base, api_key="x")


async def engine_run(
    mode: Mode,
    steps: int,
    threads: int,
    llm_base: str | None,
    capture: bool = False,
    profiler: cProfile.Profile | None = None,
) -> EngineRun:
    """``threads`` threads of ``steps`` tool steps, one after the other, in this process;
    ``profiler`` is enabled while the reported threads run (their timings are then not)."""
    result = EngineRun("relaybot", mode, steps, threads)
    async with fresh_database("bench_relaybot") as dsn:
        url = asyncpg_url(dsn)
        await asyncio.to_thread(upgrade, url)
        store = TimedStore(make_engine(url))
        renderer = TimedRenderer(make_environment(), MODEL, TOKEN_BUDGET)
        inner = model_for(mode, llm_base)
        llm = TimedLLM(inner)
        agent = comparebot()
        agents = {agent.name: agent}
        service = Threads(store, agents, default_agent=agent.name, base_url="http://bench")
        try:
            async with httpx.AsyncClient() as http:
                engine = Engine(store, agents, llm, renderer, http, EngineConfig(step_cap=1000))

                async def one(steps: int, tag: str = "") -> None:
                    decided = inner.decide_s if isinstance(inner, ScriptedLLM) else 0.0
                    client, first = llm.client_s, len(llm.calls)
                    t0, cpu = time.perf_counter(), time.process_time()
                    tid = (await service.launch(task(steps, tag)))["thread_id"]
                    await engine.run(tid)
                    t1 = time.perf_counter()
                    gaps = llm.calls[first:]
                    await service.respond_approval(tid, approved=True, principal=BENCH)
                    await engine.run(tid)
                    wall = time.perf_counter() - t1 + (t1 - t0)
                    cpu = time.process_time() - cpu
                    calls = len(llm.calls) - first
                    status = (await store.load(tid)).status
                    if calls != steps + 2 or status != "done":
                        raise RuntimeError(f"relaybot: {calls} model calls, {status} ({steps})")
                    model = (inner.decide_s if isinstance(inner, ScriptedLLM) else 0.0) - decided
                    result.engine_ms.append((wall - model) * 1000 / calls)
                    result.outside_client_ms.append((wall - llm.client_s + client) * 1000 / calls)
                    result.cpu_ms.append((cpu - model) * 1000 / calls)
                    result.gaps_ms += [(b - a) * 1000 for a, b in itertools.pairwise(gaps)]

                await one(3)  # warm-up: imports, caches, the connection pool; not reported
                result.forget_warm_up()
                before = await Footprint.of(dsn)
                renderer.render_s = renderer.count_s = store.append_s = 0.0
                started = time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                try:
                    for i in range(threads):
                        await one(steps, CTX if capture and i == 0 else "")
                finally:
                    if profiler is not None:
                        profiler.disable()
                total = time.perf_counter() - started
                result.tables, result.wal_bytes, result.wal_own_bytes = await before.growth(dsn)
                result.shares = {
                    "render (jinja2)": (renderer.render_s - renderer.count_s) / total,
                    "token count (litellm)": renderer.count_s / total,
                    "store appends": store.append_s / total,
                }
        finally:
            await store.close()
    return result


async def load_run(
    mode: Mode, workers: int, args: argparse.Namespace, llm_base: str | None, arrivals: ArrivalLog
) -> LoadRun:
    """Bursts of ``args.load_threads`` threads with ``workers`` worker processes, then
    resume latencies idle and under such a burst."""
    workers_text = f"{workers} worker" + ("s" if workers > 1 else "")
    run = LoadRun("relaybot", mode, f"{workers_text} x concurrency {args.concurrency}")
    llm_env = (
        {"LLM_FACTORY": FACTORY_SPEC}
        if mode == "fake"
        else {"LLM_API_BASE": str(llm_base), "OPENAI_API_KEY": "x", "LLM_RETRY_BACKOFF": "0"}
    )
    async with fresh_database("bench_relaybot") as dsn, Procs() as procs:
        url = asyncpg_url(dsn)
        await asyncio.to_thread(upgrade, url)
        env = env_for(
            url,
            EXTRA_AGENTS=AGENT_SPEC,
            DEFAULT_AGENT="comparebot",
            WORKER_CONCURRENCY=str(args.concurrency),
            BENCH_ARRIVALS=str(arrivals.path),
            **llm_env,
        )
        await procs.start_workers(workers, env)
        await procs.wait_ready()
        settings = load_settings(
            database_url=url,
            llm_model=MODEL,
            default_agent="comparebot",
            extra_agents=AGENT_SPEC,
            log_level="WARNING",
        )
        db = await asyncpg.connect(dsn)
        try:
            async with runtime(settings, with_worker=False) as rt:
                threads = rt.threads

                async def launch(n: int, steps: int, tag: str) -> list[str]:
                    texts = [task(steps, f"{tag}-{i}") for i in range(n)]
                    launched = await asyncio.gather(*(threads.launch(t) for t in texts))
                    return [str(r["thread_id"]) for r in launched]

                async def paused(ids: Sequence[str]) -> bool:
                    rows = await db.fetch(
                        "SELECT status, count(*) FROM threads WHERE id = ANY($1::text[])"
                        " GROUP BY status",
                        list(ids),
                    )
                    counts = {r[0]: r[1] for r in rows}
                    if set(counts) - {"running", "awaiting_approval"}:
                        raise RuntimeError(f"relaybot threads went astray: {counts}")
                    return bool(counts.get("awaiting_approval", 0) == len(ids))

                async def probes(n: int) -> dict[str, str]:
                    keys = [probe_key() for _ in range(n)]
                    launched = [await threads.launch(task(0, key)) for key in keys]
                    ids = {k: str(r["thread_id"]) for k, r in zip(keys, launched, strict=True)}
                    await until(lambda: paused(list(ids.values())), 120)
                    return ids

                warm = await launch(2, 3, "WARM")
                await until(lambda: paused(warm), 120)

                async def burst(ids: list[str]) -> None:
                    await until(lambda: paused(ids), 600)

                for b in range(args.repeats):
                    t0 = time.perf_counter()
                    ids = await launch(args.load_threads, args.load_steps, f"LOAD{b}")
                    await burst(ids)
                    elapsed = time.perf_counter() - t0
                    calls = await db.fetchval(
                        "SELECT count(*) FROM events WHERE type = 'action' AND thread_id = ANY($1)",
                        ids,
                    )
                    run.burst_s.append(elapsed)
                    run.steps_per_s.append(calls / elapsed)

                idle = await probes(args.probes)
                for key, tid in idle.items():
                    sent = time.monotonic()
                    await threads.respond_approval(tid, approved=True, principal=BENCH)
                    arrived = (await arrivals.wait_for([key]))[key]
                    run.idle_ms.append((arrived - sent) * 1000)
                    await asyncio.sleep(args.spacing)

                loaded = await probes(args.probes)
                load_started = time.monotonic()
                load_ids = await launch(args.load_threads, args.load_steps, "LOADED")
                load_end: list[float] = []

                async def watch() -> None:
                    await until(lambda: paused(load_ids), 600)
                    load_end.append(time.monotonic())

                watcher = asyncio.create_task(watch())
                sent_at: dict[str, float] = {}
                for key, tid in loaded.items():
                    sent_at[key] = time.monotonic()
                    await threads.respond_approval(tid, approved=True, principal=BENCH)
                    await asyncio.sleep(args.spacing)
                arrived_at = await arrivals.wait_for(list(loaded), 600)
                await watcher
                run.loaded_sent = len(sent_at)
                run.load_drain_s = load_end[0] - load_started
                run.loaded_ms = [
                    (arrived_at[k] - sent_at[k]) * 1000 for k in loaded if sent_at[k] < load_end[0]
                ]
        finally:
            await db.close()
    return run
