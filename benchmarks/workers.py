"""Worker benchmarks on a real Postgres, with real `relaybot` subprocesses.

1. Throughput: agent steps (model calls) per second with 1, 2 and 4 workers and a
   zero-latency model (benchmarks.fakes), on a fresh database per run.
2. Resume latency: POST /thread/{id}/response -> the next model request reaching an
   OpenAI-compatible stand-in (litellm's real HTTP path), idle and under a burst of load.

    python -m benchmarks.workers [--workers 1,2,4] [--threads 200] [--samples 30]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.settings import load_settings
from app.store.migrate import upgrade
from app.web import runtime
from benchmarks.fakes import NOOP_RESULT
from tests.fakes.llm_server import Act, FakeLLMServer, act, prompt_text

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH = {"EXTRA_AGENTS": "benchmarks.fakes:benchbot", "DEFAULT_AGENT": "benchbot"}
MODEL = "openai/test-model"
PROBE = re.compile(r"PROBE-[0-9a-f]+")


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A migrated, empty database (postgresql+asyncpg:// URL), dropped at the end."""
    name = f"relaybot_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = PG.rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + name
        try:
            await asyncio.to_thread(upgrade, url)
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def until(check: Callable[[], Awaitable[bool]], within: float, every: float = 0.02) -> None:
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(every)


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DATABASE_URL"))}
    fixed = {
        "PYTHONPATH": str(ROOT),
        "LLM_MODEL": MODEL,
        "SHUTDOWN_GRACE": "2",
        "LOG_LEVEL": "INFO",
    }
    return {**env, **fixed, **BENCH, "DATABASE_URL": database_url, **extra}


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    ready: str
    started: asyncio.Event = field(default_factory=asyncio.Event)
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(line := raw.decode(errors="replace").rstrip())
            if self.ready in line:
                self.started.set()


WORKER_READY = "started (concurrency"


class Procs:
    """`python -m app.cli ...` subprocesses, terminated (then killed) on exit."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.readers: list[asyncio.Task[None]] = []

    async def start(self, name: str, args: Sequence[str], env: dict[str, str], ready: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "app.cli", *args), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(p := Proc(name, proc, ready))
        self.readers.append(asyncio.create_task(p.read()))

    async def start_workers(self, n: int, env: dict[str, str]) -> None:
        for i in range(n):
            await self.start(f"worker {i}", ["worker"], env, ready=WORKER_READY)

    async def wait_ready(self) -> None:
        """Until every process printed its ready line; fail if one exits first. Workers get
        a second more: they LISTEN just after their ready line."""

        async def ready() -> bool:
            if dead := [p for p in self.procs if p.proc.returncode is not None]:
                raise RuntimeError(f"{dead[0].name} exited:\n" + "\n".join(dead[0].lines))
            return all(p.started.is_set() for p in self.procs)

        await until(ready, 120, 0.1)
        if any(p.ready == WORKER_READY for p in self.procs):
            await asyncio.sleep(1.0)

    async def __aenter__(self) -> Procs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.proc.returncode is None:
                p.proc.terminate()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.proc.wait(), 10)
            except TimeoutError:
                p.proc.kill()
                await p.proc.wait()
        for task in self.readers:
            task.cancel()


async def throughput(workers: int, args: argparse.Namespace) -> list[str]:
    async with fresh_database() as url, Procs() as procs:
        env = env_for(
            url,
            LLM_FACTORY="benchmarks.fakes:zero_latency_llm",
            BENCH_STEPS=str(args.steps),
            WORKER_CONCURRENCY=str(args.concurrency),
        )
        await procs.start_workers(workers, env)
        await procs.wait_ready()
        agents = {"default_agent": "benchbot", "extra_agents": BENCH["EXTRA_AGENTS"]}
        settings = load_settings(database_url=url, llm_model=MODEL, **agents)
        db = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            async with runtime(settings, with_worker=False) as rt:
                t0 = time.perf_counter()
                for i in range(args.threads):
                    await rt.threads.launch(f"bench {i}")
                launched = time.perf_counter() - t0
                await until(lambda: settled(db), 600)
                elapsed = time.perf_counter() - t0
            counts = dict(await db.fetch("SELECT type, count(*) FROM events GROUP BY type"))
        finally:
            await db.close()
    calls = counts.get("action", 0)
    cells = (workers, args.concurrency, args.threads, calls, counts.get("error", 0))
    return [*map(str, cells), f"{launched:.2f}", f"{elapsed:.2f}", f"{calls / elapsed:.0f}"]


async def settled(db: asyncpg.Connection) -> bool:
    return not await db.fetchval("SELECT count(*) FROM threads WHERE status <> 'done'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(xs: Sequence[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def wait_all(client: httpx.AsyncClient, ids: Sequence[str], status: str) -> None:
    for tid in ids:

        async def reached(tid: str = tid) -> bool:
            return bool((await client.get(f"/thread/{tid}")).json()["status"] == status)

        await until(reached, 300)


async def resumes(
    client: httpx.AsyncClient,
    arrivals: dict[str, float],
    n: int,
    spacing: float,
    before: Callable[[], Awaitable[None]] | None = None,
) -> list[float]:
    """Launch ``n`` probe threads, wait until they ask, then (after ``before()``) answer them
    ``spacing`` s apart; the latency of each is its answer -> its next model request."""
    keys = [f"PROBE-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    ids = []
    for key in keys:
        r = await client.post("/thread", json={"message": f"hi {key}", "agent": "benchbot"})
        ids.append(r.raise_for_status().json()["thread_id"])
    await wait_all(client, ids, "awaiting_response")
    if before is not None:
        await before()
    sent: dict[str, float] = {}
    for key, tid in zip(keys, ids, strict=True):
        sent[key] = time.perf_counter()
        body = {"type": "response", "response": "go"}
        (await client.post(f"/thread/{tid}/response", json=body)).raise_for_status()
        await asyncio.sleep(spacing)

    async def arrived() -> bool:
        return all(k in arrivals for k in keys)

    await until(arrived, 300, 0.005)
    return [arrivals[k] - sent[k] for k in keys]


async def resume_latency(args: argparse.Namespace) -> tuple[list[list[str]], float]:
    arrivals: dict[str, float] = {}

    def respond(body: dict[str, Any]) -> Act:
        prompt = prompt_text(body)
        if "LOAD" in prompt:
            done = prompt.count(NOOP_RESULT) >= args.steps
            return act("done_for_now", message="done") if done else act("noop")
        # The system prompt names "<human_response>"; a rendered block has attributes.
        if "<human_response " in prompt:
            if match := PROBE.search(prompt):
                arrivals.setdefault(match.group(0), time.perf_counter())
            return act("done_for_now", message="ok")
        return act("request_more_information", message="?")

    server = await FakeLLMServer().start()
    server.responder = respond
    token, port = uuid.uuid4().hex, free_port()
    try:
        async with fresh_database() as url, Procs() as procs:
            web = {"API_TOKEN": token, "HOST": "127.0.0.1", "PORT": str(port)}
            llm = {"LLM_API_BASE": server.base_url, "OPENAI_API_KEY": "x", "LLM_RETRY_BACKOFF": "0"}
            env = env_for(url, **web, **llm)
            serve = ["serve", "--no-worker", "--no-migrate"]
            await procs.start("web", serve, {**env, "LOG_LEVEL": "WARNING"}, ready="serving on")
            await procs.start_workers(2, env)
            await procs.wait_ready()
            headers = {"Authorization": f"Bearer {token}"}
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:

                async def healthy() -> bool:
                    return (await client.get("/healthz")).status_code == 200

                await until(healthy, 30, 0.1)
                idle = await resumes(client, arrivals, args.samples, args.spacing)
                load_ids: list[str] = []
                load_start = 0.0

                async def launch_load() -> None:
                    nonlocal load_start
                    load_start = time.perf_counter()
                    for i in range(args.load):
                        body = {"message": f"LOAD {i}", "agent": "benchbot"}
                        r = await client.post("/thread", json=body)
                        load_ids.append(r.raise_for_status().json()["thread_id"])

                loaded = await resumes(client, arrivals, args.samples, args.spacing, launch_load)
                await wait_all(client, load_ids, "done")
                drained = time.perf_counter() - load_start
    finally:
        await server.stop()
    rows = [
        [label, str(len(xs)), *(f"{percentile(xs, q) * 1000:.0f}" for q in (0.5, 0.99, 1))]
        for label, xs in (("idle", idle), (f"{args.load} load threads", loaded))
    ]
    return rows, drained


def table(header: str, rows: Sequence[Sequence[str]]) -> str:
    head = header.split("|")
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


async def main(args: argparse.Namespace) -> None:
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"CPUs: {os.cpu_count()}, load average {load}, python {sys.version.split()[0]}\n")
    rows = [await throughput(int(n), args) for n in args.workers.split(",")]
    print(f"## Throughput: {args.threads} threads x {args.steps} noop steps, zero-latency model\n")
    head = "workers|concurrency|threads|model calls|errors|launch s|elapsed s|steps/s"
    print(table(head, rows), end="\n\n", flush=True)
    resume_rows, drained = await resume_latency(args)
    print("## Resume latency: POST /thread/{id}/response -> next model request at the stand-in")
    print(
        f"(2 workers, web --no-worker, litellm HTTP path; answers {args.spacing:g} s apart; "
        f"the {args.load} load threads took {drained:.1f} s to drain)\n"
    )
    print(table("condition|n|p50 ms|p99 ms|max ms", resume_rows))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--workers", default="1,2,4", help="worker counts to run, comma-separated")
    p.add_argument("--threads", type=int, default=200)
    p.add_argument("--steps", type=int, default=10, help="noop steps per thread")
    p.add_argument("--concurrency", type=int, default=16, help="WORKER_CONCURRENCY")
    p.add_argument("--samples", type=int, default=30, help="resumes per condition")
    p.add_argument("--load", type=int, default=200, help="load threads for resume latency")
    p.add_argument("--spacing", type=float, default=0.25, help="seconds between resumes")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
