"""The approval promise over the real wire, Slack and the HTTP API: a gated tool runs only
after a person who may decide said yes to exactly that call, once. Each test is one of the
ways it was seen to break (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.policy import Principal
from app.timeline import format_timeline
from app.tokens import digest
from app.web import runtime
from tests.conftest import Service, deploybot_agents, eventually, make_settings, serve
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_api import BOT_USER, FakeSlackAPI
from tests.test_slack import (
    ALICE,
    BOB,
    MALLORY,
    click,
    deploy_flow,
    interactive,
    mention_and_wait_for_buttons,
    send_event,
    signed,
    slack_settings,
    until,
)


@pytest.fixture
def svc(slack_svc: Service) -> Service:
    """deploybot in Slack, with UBOB its only approver (conftest's ``slack_svc``)."""
    return slack_svc


async def _thread(svc: Service) -> Any:
    store = svc.app_state.runtime.store
    [summary] = await store.list_threads()
    return await store.load(summary.id)


async def test_a_bystanders_never_mind_does_not_drop_the_pending_approval(
    svc: Service, slack: FakeSlackAPI, deploy_hook: HttpSink
) -> None:
    request = await mention_and_wait_for_buttons(svc, slack)
    await send_event(
        svc, "message", "EvNM", user=MALLORY, ts="1700.0007", thread_ts="1700.0001",
        text="never mind, cancel that",
    )  # fmt: skip
    record = await _thread(svc)
    assert record.status == "awaiting_approval"  # stored, and it decides nothing
    assert record.events[-1].event.text == "never mind, cancel that"
    await click(svc, BOB, "relaybot_approve", request)
    await until(lambda: len(deploy_hook.calls) == 1)
    assert not any("already decided" in c["text"] for c in slack.called("chat.postEphemeral"))


async def test_a_click_from_another_channel_or_message_decides_nothing(
    svc: Service, slack: FakeSlackAPI, deploy_hook: HttpSink
) -> None:
    request = await mention_and_wait_for_buttons(svc, slack)
    elsewhere = {**request, "channel": "COTHER"}
    copied = {**request, "_ts": "1700000099.000099"}
    for fake in (elsewhere, copied):
        assert (await click(svc, BOB, "relaybot_approve", fake)).status_code == 200
    record = await _thread(svc)
    assert record.status == "awaiting_approval" and deploy_hook.calls == []
    said = [c["text"] for c in slack.called("chat.postEphemeral")]
    assert said == ["This button is not for a request."] * 2
    await click(svc, BOB, "relaybot_approve", request)  # the request's own message does
    await until(lambda: len(deploy_hook.calls) == 1)


async def test_bad_button_payloads_are_ignored_not_errors(
    svc: Service, slack: FakeSlackAPI
) -> None:
    await mention_and_wait_for_buttons(svc, slack)
    for value in ("not json", '{"t": "x"}', "[]", '{"t": 1, "s": "2"}', "{" * 500):
        payload = {
            "type": "block_actions",
            "user": {"id": BOB},
            "team": {"id": "T1"},
            "channel": {"id": "C1"},
            "message": {"ts": "1.2"},
            "trigger_id": "t",
            "actions": [{"action_id": "relaybot_approve", "value": value, "type": "button"}],
        }
        response = await signed(svc, interactive(payload), "application/x-www-form-urlencoded")
        assert response.status_code == 200
    assert (await _thread(svc)).status == "awaiting_approval"


async def test_the_requester_may_cancel_in_slack_and_the_message_says_so(
    svc: Service, slack: FakeSlackAPI, deploy_hook: HttpSink, llm_server: FakeLLMServer
) -> None:
    request = await mention_and_wait_for_buttons(svc, slack)
    await click(svc, MALLORY, "relaybot_cancel", request)  # neither requester nor approver
    assert (await _thread(svc)).status == "awaiting_approval"
    await click(svc, ALICE, "relaybot_cancel", request)  # Alice asked for it
    await until(lambda: len(slack.called("chat.update")) == 1)
    outcome = slack.called("chat.update")[0]["blocks"][-1]["elements"][0]["text"]
    assert outcome.startswith(f":no_entry_sign: *Cancelled* by <@{ALICE}>")
    record = await _thread(svc)
    cancel = next(e.event for e in record.events if e.event.type == "human_response")
    assert cancel.kind == "cancel" and cancel.evidence["principal"] == f"slack:{ALICE}"
    assert deploy_hook.calls == []


async def test_four_eyes_keeps_the_requester_from_approving_their_own_request(
    database_url: str,
    llm_server: FakeLLMServer,
    slack: FakeSlackAPI,
    deploy_hook: HttpSink,
    git_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEPLOYBOT_SLACK_APPROVERS", f"{ALICE},{BOB}")
    monkeypatch.setenv("DEPLOYBOT_FOUR_EYES", "true")
    llm_server.responder = deploy_flow
    settings = slack_settings(database_url, llm_server, slack)
    async with serve(settings, deploybot_agents(git_repo, deploy_hook)) as svc:
        request = await mention_and_wait_for_buttons(svc, slack)  # Alice asks
        await click(svc, ALICE, "relaybot_approve", request)
        assert "not allowed" in slack.called("chat.postEphemeral")[-1]["text"]
        assert (await _thread(svc)).status == "awaiting_approval"
        await click(svc, BOB, "relaybot_approve", request)
        await until(lambda: len(deploy_hook.calls) == 1)


async def test_an_approval_then_a_message_before_any_worker_still_runs_the_deploy_once(
    database_url: str, llm_server: FakeLLMServer, deploy_hook: HttpSink, git_repo: Path
) -> None:
    llm_server.responder = deploy_flow
    settings = make_settings(database_url, llm_server, poll_interval=0.1)
    agents = deploybot_agents(git_repo, deploy_hook)
    async with runtime(settings, agents=agents) as rt:
        tid = (await rt.threads.launch("deploy the backend"))["thread_id"]
        await eventually(lambda: _status(rt, tid, "awaiting_approval"))
    ops = Principal("api", "ops", "api token")
    async with runtime(settings, agents=agents, with_worker=False) as rt:  # no worker runs
        await rt.threads.respond_approval(tid, approved=True, principal=ops)
        await rt.threads.post_message(tid, "also, thanks!", author="ana")
        await rt.threads.post_message(tid, "one more thing", author="ben")
    async with runtime(settings, agents=agents) as rt:
        await eventually(lambda: _status(rt, tid, "done"))
        record = await rt.store.load(tid)
    assert [c["tag"] for c in deploy_hook.calls] == ["v1.2.0"]
    kinds = [e.event.type for e in record.events]
    assert kinds[5:10] == [
        "human_response", "user_message", "user_message", "tool_started", "tool_result"
    ]  # fmt: skip


async def _status(rt: Any, tid: str, status: str) -> bool:
    return bool((await rt.store.load(tid)).status == status)


async def test_a_fork_at_an_approval_or_a_chosen_call_does_not_run_it_again(
    database_url: str, llm_server: FakeLLMServer, deploy_hook: HttpSink, git_repo: Path
) -> None:
    llm_server.responder = deploy_flow
    settings = make_settings(database_url, llm_server, poll_interval=0.1)
    agents = deploybot_agents(git_repo, deploy_hook)
    ops = Principal("api", "ops", "api token")
    async with runtime(settings, agents=agents) as rt:
        tid = (await rt.threads.launch("deploy the backend"))["thread_id"]
        await eventually(lambda: _status(rt, tid, "awaiting_approval"))
        await rt.threads.respond_approval(tid, approved=True, principal=ops)
        await eventually(lambda: _status(rt, tid, "done"))
        assert len(deploy_hook.calls) == 1
        record = await rt.store.load(tid)
        seqs = {e.event.type: e.seq for e in reversed(record.events)}
        forks = []
        for at in ("action", "approval_requested", "human_response", "tool_started"):
            fork = await rt.threads.fork(tid, seqs[at] if at != "action" else 4)
            forks.append(fork)
        for fork in forks:  # each asks the model again, and then a person again
            await eventually(lambda f=fork: _status(rt, f, "awaiting_approval"))  # type: ignore[misc]
            kept = await rt.store.load(fork)
            assert [e.event.type for e in kept.events].count("human_response") == 0
        assert len(deploy_hook.calls) == 1  # no fork ran the deploy
        await rt.threads.respond_approval(forks[0], approved=True, principal=ops)
        await eventually(lambda: _status(rt, forks[0], "done"))
    assert len(deploy_hook.calls) == 2  # a new approval in the fork, a new deploy


async def test_the_api_decides_only_as_the_policy_says(
    database_url: str,
    llm_server: FakeLLMServer,
    deploy_hook: HttpSink,
    git_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEPLOYBOT_SLACK_APPROVERS", BOB)
    tokens = [
        {"name": "ci", "scopes": ["launch", "read", "respond"], "sha256": digest("ci-token")},
        {"name": "console", "scopes": ["read", "approve:deploybot"], "sha256": digest("c-token")},
    ]
    llm_server.responder = deploy_flow
    settings = make_settings(
        database_url, llm_server, api_token="admin-token", api_tokens=json.dumps(tokens)
    )
    async with serve(settings, deploybot_agents(git_repo, deploy_hook), token="ci-token") as svc:
        created = await svc.client.post("/thread", json={"message": "deploy the backend"})
        tid = created.json()["thread_id"]
        waiting = await svc.wait_for(tid, "awaiting_approval")
        request = waiting["events"][-1]
        approve = {"type": "approval", "approved": True, "request_seq": request["seq"]}
        url = f"/thread/{tid}/response"
        for token in ("ci-token", "admin-token"):  # may launch, may not decide
            headers = {"Authorization": f"Bearer {token}"}
            refused = await svc.client.post(url, json=approve, headers=headers)
            assert refused.status_code == 403, refused.text
        wrong = await svc.client.post(url, json=approve, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        console = {"Authorization": "Bearer c-token"}
        other = {**approve, "digest": "0" * 32}
        assert (await svc.client.post(url, json=other, headers=console)).status_code == 409
        ok = await svc.client.post(
            url, json={**approve, "digest": request["data"]["digest"]}, headers=console
        )
        assert ok.status_code == 202, ok.text
        done = await svc.wait_for(tid, "done")
    assert len(deploy_hook.calls) == 1
    decision = next(e for e in done["events"] if e["type"] == "human_response")
    assert decision["data"]["evidence"]["principal"] == "api:console"
    assert decision["data"]["evidence"]["via"] == "api token"


async def test_threads_show_prints_each_decisions_evidence(
    database_url: str, llm_server: FakeLLMServer, deploy_hook: HttpSink, git_repo: Path
) -> None:
    llm_server.responder = deploy_flow
    settings = make_settings(database_url, llm_server, poll_interval=0.1)
    async with runtime(settings, agents=deploybot_agents(git_repo, deploy_hook)) as rt:
        tid = (await rt.threads.launch("deploy the backend"))["thread_id"]
        await eventually(lambda: _status(rt, tid, "awaiting_approval"))
        who = Principal("slack", "UBOB", "slack signature", {"channel": "C1"})
        await rt.threads.respond_approval(tid, approved=True, principal=who)
        await eventually(lambda: _status(rt, tid, "done"))
        shown = format_timeline(await rt.store.load(tid))
    assert "evidence: slack:UBOB; by slack signature; channel=C1; args " in shown


async def test_a_mention_still_starts_threads_and_is_not_a_decision(
    svc: Service, slack: FakeSlackAPI
) -> None:
    request = await mention_and_wait_for_buttons(svc, slack)
    await send_event(
        svc, "app_mention", "EvAp", user=BOB, ts="1700.0009", thread_ts="1700.0001",
        text=f"<@{BOT_USER}> approve",
    )  # fmt: skip
    record = await _thread(svc)
    assert record.status == "awaiting_approval"  # a message that says "approve" is a message
    assert request["blocks"]
