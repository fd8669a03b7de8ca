"""What an operator sees and does: /metrics, /readyz, each model call's cost on its thread,
and the CLI's `threads retry` and `threads fork`, on both backends."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.agent import Agent
from app.web import Runtime, runtime
from tests.conftest import deploybot_agents, eventually, make_settings, serve
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import Fail, FakeLLMServer, act

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def agents(git_repo: Path, deploy_hook: HttpSink) -> dict[str, Agent]:
    return deploybot_agents(git_repo, deploy_hook)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if line.startswith(name + "{") and any(found.get(k) != v for k, v in labels.items()):
            continue
        return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


async def test_metrics_count_what_happened_and_what_waits(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    llm_server.script(act("list_git_tags"), act("deploy_backend", tag="v1.2.0"))
    settings = make_settings(database_url, llm_server, llm_model="openai/gpt-4o-mini")
    async with serve(settings, agents) as svc:
        before = (await svc.client.get("/metrics")).text
        launched = await svc.client.post("/thread", json={"message": "deploy the backend"})
        tid = launched.json()["thread_id"]
        body = await svc.wait_for(tid, "awaiting_approval")
        scrape = await svc.client.get("/metrics")
        ready = await svc.client.get("/readyz")

    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    # Counters are per process and only grow: compare with the scrape before the thread.
    for kind in ("call_model",):
        steps = metric(text, "relaybot_steps_total", agent="deploybot", kind=kind)
        assert steps - _or_zero(before, "relaybot_steps_total", agent="deploybot", kind=kind) == 2
    calls = metric(text, "relaybot_llm_request_seconds_count", model="gpt-4o-mini", outcome="ok")
    assert calls >= 2
    tokens = metric(text, "relaybot_llm_tokens_total", model="gpt-4o-mini", kind="prompt")
    assert tokens >= 200  # the stand-in reports 100 prompt tokens a call
    assert metric(text, "relaybot_llm_cost_usd_total", model="gpt-4o-mini") > 0
    launches = metric(
        text, "relaybot_http_request_seconds_count", method="POST", route="/thread", status="201"
    )
    assert launches >= 1
    # Read from the database at scrape time: this very thread waits on a person.
    assert metric(text, "relaybot_threads_waiting", status="awaiting_approval") == 1
    assert metric(text, "relaybot_threads_waiting", status="awaiting_response") == 0
    waited = metric(text, "relaybot_threads_waiting_oldest_seconds", status="awaiting_approval")
    assert 0 <= waited < 30
    assert metric(text, "relaybot_outbox_rows", status="dead") == 0
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}

    # Every model call is on the thread: model, tokens, cost and latency.
    actions = [e["data"] for e in body["events"] if e["type"] == "action"]
    assert len(actions) == 2
    for data in actions:
        assert data["model"] == "gpt-4o-mini"
        assert (data["prompt_tokens"], data["completion_tokens"]) == (100, 10)
        assert data["cost_usd"] > 0 and data["latency_ms"] > 0


def _or_zero(text: str, name: str, **labels: str) -> float:
    try:
        return metric(text, name, **labels)
    except AssertionError:
        return 0.0


async def test_readyz_fails_when_the_database_is_gone(
    llm_server: FakeLLMServer, agents: dict[str, Agent], tmp_path: Path
) -> None:
    db = tmp_path / "gone" / "relaybot.db"  # a directory that does not exist: no database
    settings = make_settings(f"sqlite+aiosqlite:///{db}", llm_server, poll_interval=30)
    async with serve(settings, agents) as svc:
        alive = await svc.client.get("/healthz")
        ready = await svc.client.get("/readyz")
    assert alive.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "database unreachable" in ready.json()["detail"]


# -- the CLI: retry and fork ---------------------------------------------------------------


async def relaybot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, waited for off the event loop: the runtime in this process
    must go on (on SQLite, a blocked loop could hold the write lock the CLI waits for)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def cli_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DATABASE_URL"))}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=database_url)
    return env


async def test_retry_runs_a_failed_step_again(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    llm_server.script(Fail(503), Fail(503), Fail(503))
    settings = make_settings(database_url, llm_server, poll_interval=0.1)
    env = cli_env(database_url)
    async with runtime(settings, agents=agents) as rt:
        tid = (await rt.threads.launch("list the tags"))["thread_id"]

        async def escalated() -> bool:
            return (await rt.store.load(tid)).status == "awaiting_response"

        await eventually(escalated)
        # The provider is back; an operator retries instead of answering in the channel.
        llm_server.script(act("done_for_now", message="v1.2.0 is the latest"))
        retried = await relaybot("threads", "retry", tid, env=env)
        assert retried.returncode == 0, retried.stderr
        assert f"thread {tid} will retry" in retried.stdout

        async def done() -> bool:
            return (await rt.store.load(tid)).status == "done"

        await eventually(done)
        record = await rt.store.load(tid)
        again = await relaybot("threads", "retry", tid, env=env)
    kinds = [e.event.type for e in record.events]
    assert kinds == ["user_message", "error", "error", "error", "escalated", "retried", "action",
                     "done_for_now"]  # fmt: skip
    assert record.events[5].actor == "operator"
    assert '<retry from="operator">' in llm_server.prompts()[-1]
    # Nothing failed now: a second retry is refused, and the thread is unchanged.
    assert again.returncode == 1
    assert "its last step did not fail" in again.stderr


async def test_fork_copies_a_thread_up_to_a_point(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    llm_server.script(
        act("list_git_tags"),
        act("done_for_now", message="v1.2.0"),
        act("done_for_now", message="from the fork: v1.2.0"),
    )
    settings = make_settings(database_url, llm_server, poll_interval=0.1)
    env = cli_env(database_url)
    async with runtime(settings, agents=agents) as rt:
        tid = (await rt.threads.launch("list the tags"))["thread_id"]
        await eventually(lambda: _status_is(rt, tid, "done"))
        original = await rt.store.load(tid)

        forked = await relaybot("threads", "fork", tid, "--at", "3", env=env)
        assert forked.returncode == 0, forked.stderr
        fork_id = forked.stdout.strip()
        assert fork_id != tid and f"forked {tid} at seq 3" in forked.stderr
        # Events 1-3 (the message, the choice, the tool's result) are copied; the fork
        # goes on from there on its own.
        await eventually(lambda: _status_is(rt, fork_id, "done"))
        fork = await rt.store.load(fork_id)

        past_end = await relaybot("threads", "fork", tid, "--at", "99", env=env)
        unknown_agent = await relaybot(
            "threads", "fork", tid, "--at", "2", "--agent", "nobody", env=env
        )
        missing = await relaybot("threads", "fork", "no-such-thread", "--at", "1", env=env)
        after = await rt.store.load(tid)

    assert [e.event for e in fork.events[:3]] == [e.event for e in original.events[:3]]
    assert [e.event.type for e in fork.events[3:]] == ["action", "done_for_now"]
    assert fork.events[-1].event.message == "from the fork: v1.2.0"  # type: ignore[union-attr]
    assert fork.channel == "api" and fork.agent == original.agent
    assert after.version == original.version  # the original is untouched
    assert past_end.returncode == 1 and "there is no seq 99" in past_end.stderr
    assert unknown_agent.returncode == 1 and "nobody" in unknown_agent.stderr
    assert missing.returncode == 1 and "no-such-thread" in missing.stderr


async def _status_is(rt: Runtime, tid: str, status: str) -> bool:
    return (await rt.store.load(tid)).status == status


async def test_threads_list_filters_by_status(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    llm_server.script(act("list_git_tags"), act("deploy_backend", tag="v1.2.0"))
    settings = make_settings(database_url, llm_server, poll_interval=0.1)
    async with runtime(settings, agents=agents) as rt:
        waiting = (await rt.threads.launch("deploy"))["thread_id"]
        await eventually(lambda: _status_is(rt, waiting, "awaiting_approval"))
    listed = await relaybot(
        "threads", "list", "--status", "awaiting_approval", env=cli_env(database_url)
    )
    assert listed.returncode == 0, listed.stderr
    assert waiting in listed.stdout
