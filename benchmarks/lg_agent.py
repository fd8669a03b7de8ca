"""LangGraph's side of ``benchmarks.compare``: the same agent as a ReAct graph.

A ``StateGraph(MessagesState)``: an ``agent`` node that calls the model (with relaybot's
system prompt in front of the messages), a ``ToolNode`` with ``noop`` and ``deploy``, and
``tools_condition`` between them. ``deploy`` asks for the approval with ``interrupt()``; the
answer comes back with ``Command(resume=...)``. The checkpointer is ``AsyncPostgresSaver``
on a psycopg pool, in LangGraph's default durability ("async"). The model: a chat model that
follows the shared script in-process, or ``ChatOpenAI`` against the HTTP stand-in.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, interrupt
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import ConfigDict

from benchmarks.compare_common import (
    CTX,
    DEPLOY_DOC,
    DEPLOYED,
    NOOP_DOC,
    NOOP_RESULT,
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

MODEL = "test-model"
# About the connections relaybot's store may hold. AsyncPostgresSaver takes one asyncio.Lock
# around every query anyway, so one saver never uses more than one connection at a time.
POOL_SIZE = 20
RECURSION_LIMIT = 10_000  # LangGraph's default (25 super-steps) stops a 100-step thread


@tool(description=NOOP_DOC)
async def noop() -> str:
    return NOOP_RESULT


@tool(description=DEPLOY_DOC)
async def deploy(tag: str) -> str:
    decision = interrupt({"action": "deploy", "tag": tag})
    return DEPLOYED if decision.get("approved") else "denied"


TOOLS = [noop, deploy]


@dataclass
class Clock:
    """Seconds spent inside the scripted model: the model's own time."""

    seconds: float = 0.0


class ScriptedChatModel(BaseChatModel):
    """A zero-latency chat model returning tool calls by the shared script."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    clock: Clock
    arrivals: ArrivalLog | None = None

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        started = time.perf_counter()
        first = next(m for m in messages if isinstance(m, HumanMessage))
        text = str(first.content)
        names = [m.name for m in messages if isinstance(m, ToolMessage)]
        step = next_step(wanted_steps(text), names.count("noop"), "deploy" in names)
        if step == "done":
            if self.arrivals is not None and (probe := PROBE.search(text)):
                self.arrivals.record(probe.group(0))
            reply = AIMessage(content="done")
        else:
            args = {"tag": "v1"} if step == "deploy" else {}
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            reply = AIMessage(content="", tool_calls=[{"name": step, "args": args, "id": call_id}])
        self.clock.seconds += time.perf_counter() - started
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._reply(messages)


@dataclass
class Recorder:
    """When each model request starts, and the time spent in the model call."""

    calls: list[float] = field(default_factory=list)
    client_s: float = 0.0


def build_graph(model: Runnable[Any, BaseMessage], system: str, rec: Recorder, saver: Any) -> Any:
    async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        started = time.perf_counter()
        rec.calls.append(started)
        reply = await model.ainvoke([SystemMessage(system), *state["messages"]])
        rec.client_s += time.perf_counter() - started
        return {"messages": [reply]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(TOOLS))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver)


def model_for(
    mode: Mode, llm_base: str | None, clock: Clock, arrivals: ArrivalLog | None = None
) -> Runnable[Any, BaseMessage]:
    if mode == "fake":
        return ScriptedChatModel(clock=clock, arrivals=arrivals)
    chat = ChatOpenAI(model=MODEL, base_url=llm_base, api_key="x", max_retries=0, timeout=60)
    return chat.bind_tools(TOOLS)


@asynccontextmanager
async def saver_for(dsn: str) -> AsyncIterator[AsyncPostgresSaver]:
    """AsyncPostgresSaver on a psycopg pool, its tables set up (the documented way)."""
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
        dsn, min_size=1, max_size=POOL_SIZE, kwargs=kwargs, open=False
    )
    await pool.open()
    try:
        saver = AsyncPostgresSaver(pool)
        await saver.setup()
        yield saver
    finally:
        await pool.close()


def config_for(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": RECURSION_LIMIT}


def start(steps: int, tag: str = "") -> dict[str, list[BaseMessage]]:
    return {"messages": [HumanMessage(task(steps, tag))]}


APPROVE: Command[Any] = Command(resume={"approved": True})


def check_paused(out: dict[str, Any]) -> None:
    if not out.get("__interrupt__"):
        raise RuntimeError(f"langgraph: no interrupt: {out['messages'][-1]!r}")


async def engine_run(
    mode: Mode,
    steps: int,
    threads: int,
    llm_base: str | None,
    system: str,
    capture: bool = False,
) -> EngineRun:
    """``threads`` threads of ``steps`` tool steps, one after the other."""
    result = EngineRun("langgraph", mode, steps, threads)
    async with fresh_database("bench_langgraph") as dsn, saver_for(dsn) as saver:
        clock, rec = Clock(), Recorder()
        graph = build_graph(model_for(mode, llm_base, clock), system, rec, saver)

        async def one(steps: int, tag: str = "") -> None:
            config = config_for(str(uuid.uuid4()))
            decided, client, first = clock.seconds, rec.client_s, len(rec.calls)
            t0, cpu = time.perf_counter(), time.process_time()
            check_paused(await graph.ainvoke(start(steps, tag), config))
            t1 = time.perf_counter()
            gaps = rec.calls[first:]
            out = await graph.ainvoke(APPROVE, config)
            wall = time.perf_counter() - t1 + (t1 - t0)
            cpu = time.process_time() - cpu
            calls = len(rec.calls) - first
            if calls != steps + 2 or out["messages"][-1].content != "done":
                raise RuntimeError(f"langgraph: {calls} model calls for {steps} steps")
            result.engine_ms.append((wall - clock.seconds + decided) * 1000 / calls)
            result.outside_client_ms.append((wall - rec.client_s + client) * 1000 / calls)
            result.cpu_ms.append((cpu - clock.seconds + decided) * 1000 / calls)
            result.gaps_ms += [(b - a) * 1000 for a, b in itertools.pairwise(gaps)]

        await one(3)  # warm-up, not reported
        result.forget_warm_up()
        before = await Footprint.of(dsn)
        for i in range(threads):
            await one(steps, CTX if capture and i == 0 else "")
        result.tables, result.wal_bytes, result.wal_own_bytes = await before.growth(dsn)
    return result


async def load_run(
    mode: Mode, args: argparse.Namespace, llm_base: str | None, system: str, arrivals: ArrivalLog
) -> LoadRun:
    """Bursts of ``args.load_threads`` graph runs at once in this process, then resume
    latencies idle and under such a burst."""
    run = LoadRun("langgraph", mode, "1 process")
    async with fresh_database("bench_langgraph") as dsn, saver_for(dsn) as saver:
        rec = Recorder()
        graph = build_graph(model_for(mode, llm_base, Clock(), arrivals), system, rec, saver)

        async def burst(n: int, steps: int, tag: str) -> None:
            runs = [
                graph.ainvoke(start(steps, f"{tag}-{i}"), config_for(f"{tag}-{i}"))
                for i in range(n)
            ]
            for out in await asyncio.gather(*runs):
                check_paused(out)

        async def probes(n: int) -> list[str]:
            keys = [probe_key() for _ in range(n)]
            for key in keys:
                check_paused(await graph.ainvoke(start(0, key), config_for(key)))
            return keys

        await burst(2, 3, "WARM")
        for b in range(args.repeats):
            first = len(rec.calls)
            t0 = time.perf_counter()
            await burst(args.load_threads, args.load_steps, f"LOAD{b}")
            elapsed = time.perf_counter() - t0
            run.burst_s.append(elapsed)
            run.steps_per_s.append((len(rec.calls) - first) / elapsed)

        for key in await probes(args.probes):
            sent = time.monotonic()
            await graph.ainvoke(APPROVE, config_for(key))
            arrived = (await arrivals.wait_for([key]))[key]
            run.idle_ms.append((arrived - sent) * 1000)
            await asyncio.sleep(args.spacing)

        keys = await probes(args.probes)
        load_started = time.monotonic()
        load = asyncio.create_task(burst(args.load_threads, args.load_steps, "LOADED"))
        load_end: list[float] = []
        load.add_done_callback(lambda _: load_end.append(time.monotonic()))
        await asyncio.sleep(0)  # the burst's runs start
        sent_at: dict[str, float] = {}
        resumes: list[asyncio.Task[Any]] = []
        for key in keys:
            sent_at[key] = time.monotonic()
            resumes.append(asyncio.create_task(graph.ainvoke(APPROVE, config_for(key))))
            await asyncio.sleep(args.spacing)
        await asyncio.gather(*resumes)
        await load
        arrived_at = await arrivals.wait_for(keys, 600)
        run.loaded_sent = len(keys)
        run.load_drain_s = load_end[0] - load_started
        run.loaded_ms = [
            (arrived_at[k] - sent_at[k]) * 1000 for k in keys if sent_at[k] < load_end[0]
        ]
    return run
