"""Real `relaybot worker` processes on one Postgres: graceful shutdown, and a crash test
that SIGKILLs workers at random moments while 200 deploybot threads run."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from app.policy import Principal
from app.store.outbox import Outbox
from app.web import Runtime, runtime
from tests.conftest import deploybot_agents, eventually, make_settings
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import Act, Delay, FakeLLMServer, act, prompt_text

ROOT = Path(__file__).resolve().parent.parent
CRASH_THREADS = int(os.environ.get("CRASH_THREADS", "200"))


def worker_env(pg_url: str, llm: FakeLLMServer, deploy: HttpSink, out: HttpSink, repo: Path,
               **extra: str) -> dict[str, str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DATABASE_URL"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DATABASE_URL=pg_url,
        LLM_MODEL="openai/test-model",
        LLM_API_BASE=llm.base_url,
        OPENAI_API_KEY="sk-test",
        LLM_RETRY_BACKOFF="0",
        DEPLOYBOT_REPO=str(repo),
        DEPLOYBOT_WEBHOOK_URL=deploy.url,
        API_WEBHOOK_URL=out.url,
        SECRET_KEY="c" * 32,
        WORKER_LEASE="5",
        POLL_INTERVAL="0.5",
        LOG_LEVEL="WARNING",
        **extra,
    )
    return env


class Workers:
    """`relaybot worker` subprocesses that can be killed and restarted."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started = 0
        self._logs: list[IO[bytes]] = []

    def start(self, slot: int) -> None:
        self.started += 1
        log = open(self.logs / f"worker-{slot}-{self.started}.log", "wb")  # noqa: SIM115
        self._logs.append(log)
        self.procs[slot] = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], env=self.env, stdout=log, stderr=log
        )

    def kill(self, slot: int) -> None:
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()


@contextmanager
def workers(env: dict[str, str], logs: Path, n: int) -> Iterator[Workers]:
    w = Workers(env, logs)
    for slot in range(n):
        w.start(slot)
    try:
        yield w
    finally:
        w.stop_all()


@asynccontextmanager
async def sinks() -> AsyncIterator[tuple[HttpSink, HttpSink]]:
    deploy, out = await HttpSink().start(), await HttpSink().start()
    try:
        yield deploy, out
    finally:
        await deploy.stop()
        await out.stop()


async def wait_status(rt: Runtime, tid: str, status: str, within: float) -> None:
    async def reached() -> bool:
        return (await rt.store.load(tid)).status == status

    await eventually(reached, within)


async def all_settled(rt: Runtime) -> bool:
    if any(s.status != "done" for s in await rt.store.list_threads(limit=100_000)):
        return False
    return not (await rt.outbox.counts()).get("pending", 0)


@pytest.mark.parametrize("grace", ["5", "0.3"])
async def test_sigterm_finishes_or_releases_the_step(
    pg_url: str, llm_server: FakeLLMServer, git_repo: Path, tmp_path: Path, grace: str
) -> None:
    """Grace longer than the step: it finishes. Shorter: the claim is released at once,
    so another worker takes the thread over without waiting for the lease to expire."""
    llm_server.script(
        Delay(2.0, act("done_for_now", message="slow")), act("done_for_now", message="again")
    )
    async with sinks() as (deploy, out):
        env = worker_env(pg_url, llm_server, deploy, out, git_repo, SHUTDOWN_GRACE=grace)
        settings = make_settings(pg_url, llm_server)
        async with runtime(
            settings, agents=deploybot_agents(git_repo, deploy), with_worker=False
        ) as rt:
            with workers(env, tmp_path, 1) as w:
                tid = (await rt.threads.launch("hello"))["thread_id"]
                await asyncio.wait_for(llm_server.received.wait(), 30)
                loop = asyncio.get_running_loop()
                stopping = loop.time()
                w.procs[0].send_signal(signal.SIGTERM)
                code = await loop.run_in_executor(None, w.procs[0].wait)
                took = loop.time() - stopping
                assert code == 0
                assert took < float(grace) + 3
                if grace == "5":
                    await wait_status(rt, tid, "done", 1)  # finished before exiting
                    assert len(llm_server.requests) == 1
                else:
                    assert (await rt.store.load(tid)).status == "running"
                    # Released, not left to its 5 s lease: runnable by anyone right now.
                    assert await claim_of(rt, tid) == (None, None)
                    w.start(0)
                    await wait_status(rt, tid, "done", 30)
                    assert len(llm_server.requests) == 2
            events = (await rt.store.load(tid)).events
        assert [e.event.type for e in events] == ["user_message", "action", "done_for_now"]


async def claim_of(rt: Runtime, tid: str) -> tuple[Any, Any]:
    """Who holds the thread's claim, and until when (None, None: nobody)."""
    from sqlalchemy import select

    from app.store.tables import threads

    async with rt.store.engine.connect() as conn:
        row = (
            await conn.execute(
                select(threads.c.claimed_by, threads.c.claimed_until).where(threads.c.id == tid)
            )
        ).one()
    return row.claimed_by, row.claimed_until


async def stuck(rt: Runtime, logs: Path) -> str:
    """What did not settle, for the failure message."""
    threads = await rt.store.list_threads(limit=100_000)
    open_ones = [t for t in threads if t.status != "done"]
    lines = [f"statuses: {Counter(t.status for t in threads)}"]
    lines.append(f"outbox: {await rt.outbox.counts()}")
    for t in open_ones[:3]:
        record = await rt.store.load(t.id)
        lines.append(f"{t.id}: {[e.event.type for e in record.events]}")
    return "\n".join(lines + log_tails(logs))


def log_tails(logs: Path) -> list[str]:
    return [f"{p.name}: {p.read_text()[-800:]}" for p in sorted(logs.glob("worker-*.log"))[-3:]]


def crash_flow(body: dict[str, Any]) -> Act:
    prompt = prompt_text(body)
    if "<deploy_backend_result>" in prompt or "it was deployed" in prompt:
        return act("done_for_now", message="deployed")
    if "<list_git_tags_result>" not in prompt:
        return act("list_git_tags")
    return act("deploy_backend", tag="v1.2.0")


async def play_the_human(rt: Runtime, deploy: HttpSink, stop: asyncio.Event) -> Counter[str]:
    """Approve every deploy; when told a deploy was interrupted, say whether it ran."""
    said: Counter[str] = Counter()
    while not stop.is_set():
        for summary in await rt.store.list_threads(status="awaiting_approval", limit=1000):
            await rt.threads.respond_approval(
                summary.id, approved=True, principal=Principal("operator", "ops", "test")
            )
            said["approved"] += 1
        for summary in await rt.store.list_threads(status="awaiting_response", limit=1000):
            deployed = any(c["thread_id"] == summary.id for c in deploy.calls)
            text = "it was deployed" if deployed else "it did not run; please try again"
            await rt.threads.respond_text(summary.id, text, author="ops")
            said["interrupted, " + ("ran" if deployed else "did not run")] += 1
        await asyncio.sleep(0.1)
    return said


async def test_crash_test_kill_workers_at_random(
    pg_url: str, llm_server: FakeLLMServer, git_repo: Path, tmp_path: Path
) -> None:
    llm_server.responder = crash_flow
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    async with sinks() as (deploy, out):
        env = worker_env(pg_url, llm_server, deploy, out, git_repo)
        settings = make_settings(pg_url, llm_server, api_webhook_url=out.url, secret_key="c" * 32)
        agents = deploybot_agents(git_repo, deploy)
        async with runtime(settings, agents=agents, with_worker=False) as rt:
            ids = [
                (await rt.threads.launch(f"deploy #{i}"))["thread_id"] for i in range(CRASH_THREADS)
            ]
            stop_human = asyncio.Event()
            human = asyncio.create_task(play_the_human(rt, deploy, stop_human))
            kills = 0
            with workers(env, tmp_path, 3) as w:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 25
                while loop.time() < deadline:
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    slot = rng.randrange(3)
                    w.kill(slot)
                    kills += 1
                    w.start(slot)
                try:
                    await eventually(lambda: all_settled(rt), within=240)
                except TimeoutError:
                    raise AssertionError(await stuck(rt, tmp_path)) from None
            stop_human.set()
            said = await human
            records = [await rt.store.load(tid) for tid in ids]
            rows = await Outbox(rt.store.engine).list(limit=100_000)

    deploys = Counter(c["thread_id"] for c in deploy.calls)
    approvals = {
        r.id: sum(1 for e in r.events if e.event.type == "human_response" and e.event.approved)  # type: ignore[union-attr]
        for r in records
    }
    for r in records:
        assert r.status == "done", r.id
        assert [e.seq for e in r.events] == list(range(1, len(r.events) + 1))
        kinds = Counter(e.event.type for e in r.events)
        # Every deploy that was started either reported a result or was reported interrupted.
        started = kinds["tool_started"]
        results = sum(
            1
            for e in r.events
            if e.event.type == "tool_result" and e.event.intent == "deploy_backend"
        )  # type: ignore[union-attr]
        interrupted = sum(1 for e in r.events if e.event.type == "escalated")
        assert started == results + interrupted, r.id
        assert kinds["approval_requested"] == approvals[r.id]
        # Exactly once per approval: never more deploys than approvals, and a deploy that
        # reported a result happened exactly once.
        assert 1 <= deploys[r.id] <= approvals[r.id], (r.id, deploys[r.id], approvals[r.id])
        if interrupted == 0:
            assert deploys[r.id] == approvals[r.id] == 1
    assert all(row.status == "sent" for row in rows)
    delivered = Counter(int(h["x-relaybot-delivery"]) for h in out.headers)
    assert set(delivered) == {row.id for row in rows}
    duplicates = sum(n - 1 for n in delivered.values())
    print(
        f"\ncrash test: {CRASH_THREADS} threads, {kills} SIGKILLs, {len(rows)} outbound messages, "
        f"{duplicates} sent twice; {len(deploy.calls)} deploys for {sum(approvals.values())} "
        f"approvals; human said {dict(said)}"
    )
