"""Slack on the real wire: signed requests (Slack's v0 algorithm) to POST /slack/events of the
running service; Slack's Web API is a local stand-in that records each call."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier

from app.store.outbox import Outbox
from tests.conftest import Service, deploybot_agents, eventually, make_settings, serve
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import FakeLLMServer, act, prompt_text
from tests.fakes.slack_api import BOT_USER, FakeSlackAPI

SECRET = "slack-signing-secret-for-tests"
ALICE, BOB, MALLORY = "UALICE", "UBOB", "UMALLORY"


def deploy_flow(body: dict[str, Any]) -> Any:
    prompt = prompt_text(body)
    if "denied:" in prompt:
        return act("done_for_now", message="OK, **not** deploying.")
    if "<deploy_backend_result>" in prompt:
        return act("done_for_now", message="Deployed **backend** `v1.2.0`.")
    if "<list_git_tags_result>" not in prompt:
        return act("list_git_tags")
    return act("deploy_backend", tag="v1.2.0")


def slack_settings(database_url: str, llm_server: FakeLLMServer, slack: FakeSlackAPI) -> Any:
    return make_settings(
        database_url,
        llm_server,
        slack_bot_token="xoxb-test",
        slack_signing_secret=SECRET,
        slack_api_url=slack.url,
        poll_interval=0.2,
    )


@pytest.fixture
def svc(slack_svc: Service) -> Service:
    return slack_svc


async def signed(
    svc: Service, body: bytes, content_type: str, *, secret: str = SECRET, age: int = 0
) -> httpx.Response:
    stamp = str(int(time.time()) - age)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    headers = {
        "content-type": content_type,
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": signature,
    }
    return await svc.client.post("/slack/events", content=body, headers=headers)


def event(kind: str, event_id: str, **fields: Any) -> bytes:
    payload = {
        "token": "legacy",
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": True}],
        "event": {"type": kind, "channel": "C1", "event_ts": fields.get("ts"), **fields},
    }
    return json.dumps(payload).encode()


async def send_event(svc: Service, kind: str, event_id: str, **fields: Any) -> httpx.Response:
    response = await signed(svc, event(kind, event_id, **fields), "application/json")
    assert response.status_code == 200, response.text
    return response


def interactive(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


async def click(svc: Service, user: str, action_id: str, message: dict[str, Any]) -> httpx.Response:
    value = next(
        e["value"]
        for b in message["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == action_id
    )
    payload = {
        "type": "block_actions",
        "user": {"id": user},
        "team": {"id": "T1"},
        "channel": {"id": message["channel"]},
        "message": {"ts": message["_ts"], "thread_ts": message.get("thread_ts")},
        "trigger_id": f"trigger-{user}",
        "response_url": "http://127.0.0.1:9/unused",
        "actions": [{"action_id": action_id, "value": value, "type": "button"}],
    }
    return await signed(svc, interactive(payload), "application/x-www-form-urlencoded")


async def until(check: Callable[[], bool], within: float = 10) -> None:
    async def ok() -> bool:
        return check()

    await eventually(ok, within)


def approval_request(slack: FakeSlackAPI) -> dict[str, Any]:
    return next(
        c
        for c in slack.called("chat.postMessage")
        if c.get("blocks") and any(b["type"] == "actions" for b in c["blocks"])
    )


async def mention_and_wait_for_buttons(svc: Service, slack: FakeSlackAPI) -> dict[str, Any]:
    await send_event(
        svc,
        "app_mention",
        "Ev1",
        user=ALICE,
        ts="1700.0001",
        text=f"<@{BOT_USER}> deploy the latest backend",
    )
    await until(lambda: any(c.get("blocks") for c in slack.called("chat.postMessage")))
    return approval_request(slack)


async def test_mention_approve_deploy_and_update(
    svc: Service, slack: FakeSlackAPI, deploy_hook: HttpSink, llm_server: FakeLLMServer
) -> None:
    request = await mention_and_wait_for_buttons(svc, slack)
    assert (request["channel"], request["thread_ts"]) == ("C1", "1700.0001")
    section_text = " ".join(b["text"]["text"] for b in request["blocks"] if b["type"] == "section")
    assert "`deploy_backend`" in section_text and "`v1.2.0`" in section_text
    context = next(b for b in request["blocks"] if b["type"] == "context")["elements"][0]["text"]
    assert f"<@{ALICE}> asked: deploy the latest backend" in context
    # The :eyes: reaction goes out through the outbox, like every other call to Slack.
    await until(lambda: ("C1", "1700.0001", "eyes") in slack.reactions)
    assert "<@UBOT>" not in llm_server.prompts()[0]  # the mention is stripped from the text

    response = await click(svc, BOB, "relaybot_approve", request)
    assert response.status_code == 200
    await until(
        lambda: len(slack.called("chat.update")) == 1 and len(slack.called("chat.postMessage")) >= 2
    )
    assert [c["tag"] for c in deploy_hook.calls] == ["v1.2.0"]
    update = slack.called("chat.update")[0]
    assert update["channel"] == "C1" and update["ts"] == "1700000000.000001"
    assert not any(b["type"] == "actions" for b in update["blocks"])  # no stale buttons
    outcome = update["blocks"][-1]["elements"][0]["text"]
    assert outcome.startswith(f":white_check_mark: *Approved* by <@{BOB}>") and "<!date^" in outcome
    result = slack.called("chat.postMessage")[-1]
    assert result["thread_ts"] == "1700.0001"
    assert result["blocks"][0]["text"]["text"] == "Deployed *backend* `v1.2.0`."  # mrkdwn


async def test_reject_with_a_reason_through_the_modal(
    svc: Service, slack: FakeSlackAPI, deploy_hook: HttpSink, llm_server: FakeLLMServer
) -> None:
    request = await mention_and_wait_for_buttons(svc, slack)
    assert (await click(svc, BOB, "relaybot_reject", request)).status_code == 200
    [opened] = slack.called("views.open")
    assert opened["trigger_id"] == f"trigger-{BOB}"
    view = opened["view"]
    submission = {
        "type": "view_submission",
        "user": {"id": BOB},
        "team": {"id": "T1"},
        "view": {
            "id": "V1",
            "type": "modal",
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "state": {
                "values": {
                    "reason": {
                        "reason_input": {
                            "type": "plain_text_input",
                            "value": "not during the freeze",
                        }
                    }
                }
            },
        },
    }
    response = await signed(svc, interactive(submission), "application/x-www-form-urlencoded")
    assert response.status_code == 200 and response.content in (b"", b"{}")
    await until(
        lambda: len(slack.called("chat.update")) == 1 and len(slack.called("chat.postMessage")) >= 2
    )
    assert deploy_hook.calls == []
    assert "denied: not during the freeze" in llm_server.prompts()[-1]
    outcome = slack.called("chat.update")[0]["blocks"][-1]["elements"][0]["text"]
    assert outcome.startswith(f":x: *Rejected* by <@{BOB}>: not during the freeze")


async def test_a_user_who_may_not_approve_changes_nothing(
    svc: Service, slack: FakeSlackAPI, deploy_hook: HttpSink
) -> None:
    request = await mention_and_wait_for_buttons(svc, slack)
    assert (await click(svc, MALLORY, "relaybot_approve", request)).status_code == 200
    [ephemeral] = slack.called("chat.postEphemeral")
    assert ephemeral["user"] == MALLORY and "not allowed" in ephemeral["text"]
    assert deploy_hook.calls == [] and slack.called("chat.update") == []
    # The approver still can; a second click after the decision changes nothing.
    await click(svc, BOB, "relaybot_approve", request)
    await until(lambda: len(slack.called("chat.update")) == 1)
    await click(svc, BOB, "relaybot_reject", request)
    assert slack.called("views.open") == []
    await until(lambda: len(slack.called("chat.postEphemeral")) == 2)
    assert "already decided" in slack.called("chat.postEphemeral")[-1]["text"]
    await until(lambda: len(deploy_hook.calls) == 1)


async def test_forged_and_stale_requests_are_refused(
    svc: Service, llm_server: FakeLLMServer
) -> None:
    body = event("app_mention", "EvX", user=ALICE, ts="1.1", text=f"<@{BOT_USER}> hi")
    forged = await signed(svc, body, "application/json", secret="not-the-secret")
    stale = await signed(svc, body, "application/json", age=6 * 60)
    assert forged.status_code == 401 and stale.status_code == 401
    unsigned = await svc.client.post(
        "/slack/events", content=body, headers={"content-type": "application/json"}
    )
    assert unsigned.status_code == 401
    assert await svc.app_state.runtime.store.list_threads() == []  # nothing appended
    assert llm_server.requests == []


async def test_a_signed_body_that_is_not_json_is_refused(svc: Service) -> None:
    for body in (b"{not json", b"[1, 2]"):
        response = await signed(svc, body, "application/json")
        assert response.status_code == 400, response.text
        assert "JSON" in response.json()["error"]
    assert await svc.app_state.runtime.store.list_threads() == []


async def test_url_verification(svc: Service) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "t"}).encode()
    response = await signed(svc, body, "application/json")
    assert response.status_code == 200 and response.json() == {"challenge": "c-123"}


async def test_the_same_event_three_times_is_one_event(svc: Service, slack: FakeSlackAPI) -> None:
    for _ in range(3):
        await send_event(
            svc,
            "app_mention",
            "EvSame",
            user=ALICE,
            ts="1700.0009",
            text=f"<@{BOT_USER}> deploy the latest backend",
        )
    await until(lambda: any(c.get("blocks") for c in slack.called("chat.postMessage")))
    runtime = svc.app_state.runtime  # type: ignore[attr-defined]
    [summary] = await runtime.store.list_threads()
    record = await runtime.store.load(summary.id)
    assert [e.event.type for e in record.events].count("user_message") == 1
    # The webhook's latency is in /metrics under its route, one sample per delivery.
    metrics = (await svc.client.get("/metrics")).text
    sample = 'relaybot_http_request_seconds_count{method="POST",route="/slack/events",status="200"}'
    [line] = [line for line in metrics.splitlines() if line.startswith(sample)]
    assert float(line.rsplit(" ", 1)[1]) >= 3


async def test_a_reply_in_the_thread_continues_it_without_a_mention(
    svc: Service, slack: FakeSlackAPI, llm_server: FakeLLMServer
) -> None:
    await mention_and_wait_for_buttons(svc, slack)
    await send_event(
        svc,
        "message",
        "Ev2",
        user=ALICE,
        ts="1700.0005",
        thread_ts="1700.0001",
        text="actually wait for me",
    )
    runtime = svc.app_state.runtime  # type: ignore[attr-defined]
    [summary] = await runtime.store.list_threads()
    record = await runtime.store.load(summary.id)
    replies = [e for e in record.events if e.event.type == "user_message" and e.seq > 1]
    assert [(r.event.text, r.actor) for r in replies] == [("actually wait for me", ALICE)]  # type: ignore[union-attr]
    # Not ours: a top-level channel message, and the bot's own message.
    await send_event(svc, "message", "Ev3", user=ALICE, ts="1700.0100", text="lunch?")
    await send_event(
        svc,
        "message",
        "Ev4",
        bot_id="BBOT",
        ts="1700.0101",
        thread_ts="1700.0001",
        text="I said something",
    )
    assert len(await runtime.store.list_threads()) == 1
    kinds = [e.event.type for e in (await runtime.store.load(summary.id)).events]
    assert kinds.count("user_message") == 2
    # The reply is marked as seen; what is not ours is not.
    await until(lambda: ("C1", "1700.0005", "eyes") in slack.reactions)
    assert {ts for _, ts, _ in slack.reactions} == {"1700.0001", "1700.0005"}


async def test_a_reaction_already_there_counts_as_sent(svc: Service, slack: FakeSlackAPI) -> None:
    # As when the reaction went out but its answer was lost: the outbox sends it again.
    slack.reactions.add(("C1", "1700.0001", "eyes"))
    await mention_and_wait_for_buttons(svc, slack)
    runtime = svc.app_state.runtime  # type: ignore[attr-defined]
    [summary] = await runtime.store.list_threads()
    outbox = Outbox(runtime.store.engine)

    async def reaction_row() -> list[tuple[str, str | None]]:
        rows = await outbox.list(thread_id=summary.id)
        return [(r.status, r.provider_ref) for r in rows if r.payload["kind"] == "seen"]

    await eventually(lambda: _settled(reaction_row))
    assert await reaction_row() == [("sent", "C1/1700.0001")]
    assert len(slack.called("reactions.add")) == 1


async def _settled(rows: Callable[[], Awaitable[list[tuple[str, str | None]]]]) -> bool:
    return all(status != "pending" for status, _ in await rows())


async def test_a_direct_message_starts_a_thread(svc: Service, slack: FakeSlackAPI) -> None:
    await send_event(
        svc,
        "message",
        "EvDM",
        user=ALICE,
        ts="1700.0200",
        channel="D1",
        channel_type="im",
        text="deploy the latest backend",
    )
    await until(lambda: any(c.get("blocks") for c in slack.called("chat.postMessage")))
    assert approval_request(slack)["channel"] == "D1"


async def test_a_429_is_retried_after_retry_after(svc: Service, slack: FakeSlackAPI) -> None:
    slack.ratelimit["chat.postMessage"] = 1
    slack.ratelimit["reactions.add"] = 1
    await mention_and_wait_for_buttons(svc, slack)
    limited = [m for m, _ in slack.calls if m == "chat.postMessage:429"]
    assert len(limited) == 1
    assert len(slack.called("chat.postMessage")) == 1  # sent once, after the wait
    await until(lambda: len(slack.called("reactions.add")) == 1)
    assert [m for m, _ in slack.calls if m.startswith("reactions.add")] == [
        "reactions.add:429",
        "reactions.add",
    ]


async def test_slash_command_starts_a_thread_under_a_message_of_its_own(
    svc: Service, slack: FakeSlackAPI
) -> None:
    command = urlencode(
        {
            "command": "/relaybot",
            "text": "deploy the latest backend",
            "team_id": "T1",
            "channel_id": "C7",
            "user_id": ALICE,
            "trigger_id": "trig-cmd",
            "response_url": "http://127.0.0.1:9/unused",
        }
    ).encode()
    response = await signed(svc, command, "application/x-www-form-urlencoded")
    assert response.status_code == 200 and "answer in the thread" in response.text
    root = slack.called("chat.postMessage")[0]
    assert root == {**root, "channel": "C7", "text": f"<@{ALICE}>: deploy the latest backend"}
    await until(lambda: any(c.get("blocks") for c in slack.called("chat.postMessage")))
    assert approval_request(slack)["thread_ts"] == "1700000000.000001"  # under the root
    empty = urlencode({"command": "/relaybot", "text": " ", "channel_id": "C7", "user_id": ALICE})
    usage = await signed(svc, empty.encode(), "application/x-www-form-urlencoded")
    assert "Usage" in usage.text


async def test_a_member_of_an_approver_group_may_decide(
    database_url: str,
    llm_server: FakeLLMServer,
    slack: FakeSlackAPI,
    deploy_hook: HttpSink,
    git_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEPLOYBOT_DEPLOY_BACKEND_SLACK_APPROVERS", "SOPS")
    slack.groups["SOPS"] = [BOB]
    llm_server.responder = deploy_flow
    settings = slack_settings(database_url, llm_server, slack)
    async with serve(settings, deploybot_agents(git_repo, deploy_hook)) as svc:
        request = await mention_and_wait_for_buttons(svc, slack)
        await click(svc, ALICE, "relaybot_approve", request)
        assert "not allowed" in slack.called("chat.postEphemeral")[0]["text"]
        await click(svc, BOB, "relaybot_approve", request)
        await until(lambda: len(deploy_hook.calls) == 1)
    # One look-up: the group's members are kept for a moment (Slack rate-limits the call).
    assert [c["usergroup"] for c in slack.called("usergroups.users.list")] == ["SOPS"]


async def test_a_broadcast_reply_continues_the_thread(svc: Service, slack: FakeSlackAPI) -> None:
    await mention_and_wait_for_buttons(svc, slack)
    await send_event(
        svc,
        "message",
        "EvB",
        user=ALICE,
        ts="1700.0300",
        thread_ts="1700.0001",
        subtype="thread_broadcast",
        text="also tell the channel",
    )
    await send_event(
        svc,
        "message",
        "EvE",
        user=ALICE,
        ts="1700.0301",
        thread_ts="1700.0001",
        subtype="message_changed",
        text="edited",
    )
    runtime = svc.app_state.runtime  # type: ignore[attr-defined]
    [summary] = await runtime.store.list_threads()
    texts = [
        e.event.text
        for e in (await runtime.store.load(summary.id)).events
        if e.event.type == "user_message"
    ]
    assert texts == ["deploy the latest backend", "also tell the channel"]
