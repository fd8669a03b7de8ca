"""The durable runtime in-process: workers racing, messages mid-step, timers across a
restart, wake-ups by NOTIFY. Real databases, the model behind litellm's HTTP path."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.agent import Agent, TimerPolicy
from app.engine import Engine
from app.policy import Principal
from app.web import Runtime, runtime
from tests.conftest import deploybot_agents, eventually, make_settings
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import Act, Delay, FakeLLMServer, Hold, act, prompt_text


def deploy_flow(body: dict[str, Any]) -> Act:
    """The model's side of a deploy, decided from what the prompt shows so far."""
    prompt = prompt_text(body)
    finished = ("<deploy_backend_result>", "no answer within", "it ran")
    if any(sign in prompt for sign in finished):
        return act("done_for_now", message="finished")
    if "<list_git_tags_result>" not in prompt:
        return act("list_git_tags")
    return act("deploy_backend", tag="v1.2.0")


async def statuses(rt: Runtime, ids: list[str]) -> list[str]:
    return [(await rt.store.load(t)).status for t in ids]


async def types(rt: Runtime, tid: str) -> list[str]:
    return [e.event.type for e in (await rt.store.load(tid)).events]


@pytest.fixture
async def agents(git_repo: Path, deploy_hook: HttpSink) -> dict[str, Agent]:
    return deploybot_agents(git_repo, deploy_hook)


async def test_two_workers_never_step_one_thread_at_once(
    pg_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    llm_server.responder = lambda body: act(
        "done_for_now" if "<list_git_tags_result>" in prompt_text(body) else "list_git_tags",
        **({"message": "ok"} if "<list_git_tags_result>" in prompt_text(body) else {}),
    )
    settings = make_settings(pg_url, llm_server, poll_interval=0.2, worker_concurrency=4)
    async with runtime(settings, agents=agents) as a, runtime(settings, agents=agents) as b:
        ids = [(await a.threads.launch(f"list tags {i}"))["thread_id"] for i in range(30)]
        await eventually(lambda: _all(a, ids, "done"))
        expected = ["user_message", "action", "tool_result", "action", "done_for_now"]
        for tid in ids:
            assert await types(a, tid) == expected
        # Exactly two model calls per thread: no thread was ever stepped twice.
        assert len(llm_server.requests) == 60
        assert a.worker is not None and b.worker is not None


async def test_two_engines_racing_on_one_thread_lose_nothing(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    """Without claims (a lease that expired under a slow step), optimistic appends decide."""
    llm_server.responder = lambda body: Delay(0.1, act("done_for_now", message="hi"))
    settings = make_settings(database_url, llm_server)
    async with runtime(settings, agents=agents, with_worker=False) as rt:
        tid = (await rt.threads.launch("hello"))["thread_id"]
        twin = Engine(
            rt.store, agents, rt.engine.llm, rt.engine.renderer, rt.http, rt.engine.config
        )
        await asyncio.gather(rt.engine.run(tid), twin.run(tid))
        record = await rt.store.load(tid)
    assert [e.event.type for e in record.events] == ["user_message", "action", "done_for_now"]
    assert [e.seq for e in record.events] == [1, 2, 3]


async def test_a_message_that_arrives_mid_step_is_seen_by_the_next_step(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    gate = asyncio.Event()
    llm_server.script(
        Hold(gate, act("done_for_now", message="first answer")),
        act("done_for_now", message="answer to both"),
    )
    settings = make_settings(database_url, llm_server)
    async with runtime(settings, agents=agents) as rt:
        tid = (await rt.threads.launch("deploy", channel="api"))["thread_id"]
        await asyncio.wait_for(llm_server.received.wait(), 5)
        await rt.threads.post_message(tid, "actually, the frontend", author="ann")
        gate.set()  # the model answers the first step only now, after the message
        await eventually(lambda: _all(rt, [tid], "done"))
        record = await rt.store.load(tid)
    kinds = [e.event.type for e in record.events]
    assert kinds == ["user_message", "user_message", "action", "done_for_now"]
    assert record.events[-1].event.message == "answer to both"  # type: ignore[union-attr]
    assert "actually, the frontend" in llm_server.prompts()[-1]


async def test_timers_fire_once_after_a_restart(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent], tmp_path: Path
) -> None:
    hook = await HttpSink().start()
    timers = TimerPolicy(
        remind_after=timedelta(seconds=0.3),
        escalate_after=timedelta(seconds=0.6),
        timeout_after=timedelta(seconds=0.9),
    )
    agents = {"deploybot": dataclasses.replace(agents["deploybot"], timers={"approval": timers})}
    llm_server.responder = deploy_flow
    settings = make_settings(
        database_url,
        llm_server,
        api_webhook_url=hook.url,
        poll_interval=0.1,
        secret_key="s" * 32,
    )
    try:
        async with runtime(settings, agents=agents) as rt:
            tid = (await rt.threads.launch("deploy the backend"))["thread_id"]
            await eventually(lambda: _all(rt, [tid], "awaiting_approval"))
        await asyncio.sleep(1.2)  # everything falls due while no process runs
        async with runtime(settings, agents=agents) as a, runtime(settings, agents=agents) as b:
            await eventually(lambda: _all(a, [tid], "done"))
            record = await b.store.load(tid)
            await eventually(lambda: _outbox_settled(a))
    finally:
        await hook.stop()
    kinds = [e.event.type for e in record.events]
    assert kinds == [
        "user_message",
        "action",
        "tool_result",
        "action",
        "approval_requested",
        "timer_fired",
        "timer_fired",
        "human_response",
        "action",
        "done_for_now",
    ]
    fired = [e.event.kind for e in record.events if e.event.type == "timer_fired"]  # type: ignore[union-attr]
    assert fired == ["reminder", "escalation"]
    timeout = record.events[7].event
    assert (timeout.approved, timeout.comment, timeout.channel) == (  # type: ignore[union-attr]
        False,
        "no answer within 900 ms",
        "timer",
    )
    sent = [(c["type"], c["data"].get("kind")) for c in hook.calls]
    assert sent == [
        ("approval_requested", None),
        ("timer_fired", "reminder"),
        ("timer_fired", "escalation"),
        ("human_response", "approval"),
        ("done_for_now", None),
    ]
    assert hook.calls[1]["request"]["intent"] == "deploy_backend"
    assert [c["kind"] for c in hook.calls] == [
        "approval_request", "reminder", "reminder", "decided", "result"
    ]  # fmt: skip


async def test_a_timer_is_not_early(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    llm_server.responder = deploy_flow
    settings = make_settings(database_url, llm_server, poll_interval=0.1)
    async with runtime(settings, agents=agents) as rt:
        tid = (await rt.threads.launch("deploy"))["thread_id"]
        await eventually(lambda: _all(rt, [tid], "awaiting_approval"))
        await asyncio.sleep(0.3)
        from sqlalchemy import select

        from app.store.tables import threads

        async with rt.store.engine.connect() as conn:
            run_after = await conn.scalar(select(threads.c.run_after).where(threads.c.id == tid))
        record = await rt.store.load(tid)
    requested = record.events[-1].created_at
    assert record.events[-1].event.type == "approval_requested"
    assert run_after is not None
    assert abs((run_after - requested) - timedelta(hours=1)) < timedelta(seconds=1)


async def test_notify_wakes_a_worker_in_another_runtime(
    pg_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    llm_server.script(act("done_for_now", message="hi"))
    slow_poll = make_settings(pg_url, llm_server, poll_interval=30)
    async with (
        runtime(slow_poll, agents=agents) as worker_side,
        runtime(slow_poll, agents=agents, with_worker=False) as web_side,
    ):
        await asyncio.sleep(0.5)  # the worker is idle, in a 30 s poll sleep, LISTENing
        started = asyncio.get_running_loop().time()
        tid = (await web_side.threads.launch("hello"))["thread_id"]
        await eventually(lambda: _all(worker_side, [tid], "done"), within=5)
        assert asyncio.get_running_loop().time() - started < 3


async def test_shutdown_mid_tool_then_restart_asks_a_person(
    database_url: str, llm_server: FakeLLMServer, git_repo: Path
) -> None:
    """A deploy that was running when the process stopped is not silently re-run."""
    hook = await HttpSink().start()
    hook.delay = 5.0  # the deploy hangs until the process is stopped
    agents = deploybot_agents(git_repo, hook)
    llm_server.responder = deploy_flow
    settings = make_settings(database_url, llm_server, shutdown_grace=0.2, poll_interval=0.1)
    try:
        async with runtime(settings, agents=agents) as rt:
            tid = (await rt.threads.launch("deploy"))["thread_id"]
            await eventually(lambda: _all(rt, [tid], "awaiting_approval"))
            await rt.threads.respond_approval(
                tid, approved=True, principal=Principal("operator", "ann", "test")
            )
            await asyncio.wait_for(hook.received.wait(), 5)
        # Shut down within the grace period, mid-deploy. Restart:
        async with runtime(settings, agents=agents) as rt:
            await eventually(lambda: _all(rt, [tid], "awaiting_response"))
            record = await rt.store.load(tid)
            kinds = [e.event.type for e in record.events]
            assert kinds[-3:] == ["human_response", "tool_started", "escalated"]
            reason = record.events[-1].event.reason  # type: ignore[union-attr]
            assert "deploy_backend` was interrupted" in reason
            # The person says it ran; the model hears that, and the deploy is not repeated.
            await rt.threads.respond_text(tid, "it ran", author="ann")
            await eventually(lambda: _all(rt, [tid], "done"))
            record = await rt.store.load(tid)
    finally:
        await hook.stop()
    kinds = [e.event.type for e in record.events]
    assert kinds[-5:] == ["tool_started", "escalated", "human_response", "action", "done_for_now"]
    assert len(hook.calls) == 1


async def _all(rt: Runtime, ids: list[str], status: str) -> bool:
    return all(s == status for s in await statuses(rt, ids))


async def _outbox_settled(rt: Runtime) -> bool:
    counts = await rt.outbox.counts()
    return counts.get("pending", 0) == 0


async def test_an_answer_is_served_even_when_every_normal_slot_is_busy(
    database_url: str, llm_server: FakeLLMServer, agents: dict[str, Agent]
) -> None:
    gate = asyncio.Event()

    def answers(body: dict[str, Any]) -> Any:
        prompt = prompt_text(body)
        if "busy work" in prompt:
            return Hold(gate, act("done_for_now", message="finally"))
        if '<human_response from="ann"' in prompt:
            return act("done_for_now", message="thanks")
        return act("request_more_information", message="which one?")

    llm_server.responder = answers
    settings = make_settings(database_url, llm_server, worker_concurrency=1, poll_interval=0.2)
    async with runtime(settings, agents=agents) as rt:
        asking = (await rt.threads.launch("deploy"))["thread_id"]
        await eventually(lambda: _all(rt, [asking], "awaiting_response"))
        busy = (await rt.threads.launch("busy work"))["thread_id"]  # holds the only slot
        await eventually(lambda: _requests_containing(llm_server, "busy work"))
        await rt.threads.respond_text(asking, "the backend", author="ann")
        await eventually(lambda: _all(rt, [asking], "done"), within=5)
        assert (await rt.store.load(busy)).status == "running"
        gate.set()
        await eventually(lambda: _all(rt, [busy], "done"))


async def _requests_containing(server: FakeLLMServer, text: str) -> bool:
    return any(text in p for p in server.prompts())


async def test_a_deploy_with_no_answer_is_not_reported_as_failed(
    database_url: str, llm_server: FakeLLMServer, git_repo: Path
) -> None:
    """The webhook got the deploy but answered too late: it may have run, so a person decides."""
    from agents import deploybot

    hook = await HttpSink().start()
    hook.delay = 2.0
    cfg = deploybot.DeploybotSettings(repo=git_repo, webhook_url=hook.url, webhook_timeout=0.3)
    agents = {"deploybot": deploybot.build(cfg)}
    llm_server.responder = deploy_flow
    settings = make_settings(database_url, llm_server)
    try:
        async with runtime(settings, agents=agents) as rt:
            tid = (await rt.threads.launch("deploy"))["thread_id"]
            await eventually(lambda: _all(rt, [tid], "awaiting_approval"))
            await rt.threads.respond_approval(
                tid, approved=True, principal=Principal("operator", "ann", "test")
            )
            await eventually(lambda: _all(rt, [tid], "awaiting_response"))
            record = await rt.store.load(tid)
    finally:
        await hook.stop()
    last = record.events[-1].event
    assert last.type == "escalated"
    assert (
        "`deploy_backend` may or may not have run: no answer from the deploy webhook" in last.reason
    )  # type: ignore[union-attr]
    assert len(hook.calls) == 1


async def test_the_others_wait_while_an_answered_thread_takes_its_step(
    database_url: str, llm_server: FakeLLMServer, git_repo: Path
) -> None:
    """A person answered: the thread being stepped pauses at its next step until the answered
    one is idle (here: through a 0.3 s deploy), instead of sharing the process with it."""
    hook = await HttpSink().start()
    hook.delay = 0.3
    agents = deploybot_agents(git_repo, hook)
    order: list[str] = []

    def answers(body: dict[str, Any]) -> Any:
        prompt = prompt_text(body)
        if "busy work" in prompt:
            order.append("busy")
            if prompt.count("<list_git_tags_result>") >= 15:
                return act("done_for_now", message="listed")
            return Delay(0.02, act("list_git_tags"))
        order.append("answered" if "<deploy_backend_result>" in prompt else "asking")
        return deploy_flow(body)

    llm_server.responder = answers
    settings = make_settings(database_url, llm_server, worker_concurrency=1, poll_interval=0.2)
    try:
        async with runtime(settings, agents=agents) as rt:
            rt.worker.urgent_hold = 10.0  # the deploy and the model call, however slow
            asking = (await rt.threads.launch("deploy"))["thread_id"]
            await eventually(lambda: _all(rt, [asking], "awaiting_approval"))
            busy = (await rt.threads.launch("busy work"))["thread_id"]
            await eventually(lambda: _requests_containing(llm_server, "busy work"))
            await rt.threads.respond_approval(
                asking, approved=True, principal=Principal("operator", "ann", "test")
            )
            answered_at = len(order)
            await eventually(lambda: _all(rt, [asking], "done"), within=5)
            await eventually(lambda: _all(rt, [busy], "done"), within=10)
    finally:
        await hook.stop()
    during = order[answered_at : order.index("answered")]
    # Without the pause the busy thread takes ~10 steps during the deploy; with it, at most
    # the one already under way when the answer came.
    assert during.count("busy") <= 1, order
    assert order.count("busy") == 16
