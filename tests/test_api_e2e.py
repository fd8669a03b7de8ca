"""End to end over HTTP: the real service on a loopback port, the model behind litellm's real
HTTP path (a local OpenAI-compatible stand-in), a local deploy webhook, SQLite and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.events import arguments_digest
from tests.conftest import Service, deploybot_agents, make_settings, serve
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import Fail, FakeLLMServer, Raw, act


@pytest.fixture
async def svc(
    database_url: str, llm_server: FakeLLMServer, deploy_hook: HttpSink, git_repo: Path
) -> AsyncIterator[Service]:
    settings = make_settings(database_url, llm_server)
    async with serve(settings, deploybot_agents(git_repo, deploy_hook)) as service:
        yield service


def types(thread: dict) -> list[str]:
    return [e["type"] for e in thread["events"]]


async def launch(svc: Service, message: str = "deploy the latest backend", **kw: object) -> dict:
    response = await svc.client.post("/thread", json={"message": message, **kw})
    assert response.status_code == 201, response.text
    return response.json()


async def test_approve_flow_deploys_exactly_once(
    svc: Service, llm_server: FakeLLMServer, deploy_hook: HttpSink
) -> None:
    llm_server.script(
        act("list_git_tags"),
        act("deploy_backend", tag="v1.2.0"),
        act("done_for_now", message="Deployed backend v1.2.0"),
    )
    created = await launch(svc)
    assert created["status"] == "running"
    assert created["response_url"] == f"http://relaybot.test/thread/{created['thread_id']}/response"
    assert [e["type"] for e in created["events"]] == ["user_message"]
    tid = created["thread_id"]

    waiting = await svc.wait_for(tid, "awaiting_approval")
    assert types(waiting) == [
        "user_message",
        "action",
        "tool_result",
        "action",
        "approval_requested",
    ]
    assert waiting["events"][2]["data"]["result"] == '["v1.2.0","v1.1.0","v1.0.0"]'
    assert waiting["events"][4]["data"] == {
        "intent": "deploy_backend",
        "arguments": {"tag": "v1.2.0"},
        "action_seq": 4,
        "requested_by": "api:anonymous",
        "digest": arguments_digest("deploy_backend", {"tag": "v1.2.0"}),
        "requesters": ["api:anonymous"],
    }
    assert deploy_hook.calls == []  # nothing runs before a person approves
    # The model saw the tags it listed.
    assert (
        "<list_git_tags_result>" in llm_server.prompts()[1] and "v1.2.0" in llm_server.prompts()[1]
    )

    r = await svc.client.post(
        f"/thread/{tid}/response", json={"type": "approval", "approved": True}
    )
    assert r.status_code == 202 and r.json()["status"] == "running"
    done = await svc.wait_for(tid, "done")
    assert deploy_hook.calls == [{"service": "backend", "tag": "v1.2.0", "thread_id": tid}]
    assert types(done)[5:] == [
        "human_response",
        "tool_started",
        "tool_result",
        "action",
        "done_for_now",
    ]
    assert done["events"][-1]["data"]["message"] == "Deployed backend v1.2.0"
    assert [e["seq"] for e in done["events"]] == list(range(1, 11))
    assert llm_server.unused == 0


async def test_reject_with_comment_reaches_the_next_prompt(
    svc: Service, llm_server: FakeLLMServer, deploy_hook: HttpSink
) -> None:
    llm_server.script(
        act("deploy_backend", tag="v1.2.0"),
        act("done_for_now", message="OK, not deploying."),
    )
    tid = (await launch(svc))["thread_id"]
    await svc.wait_for(tid, "awaiting_approval")
    r = await svc.client.post(
        f"/thread/{tid}/response",
        json={"type": "approval", "approved": False, "comment": "not on a friday"},
    )
    assert r.status_code == 202
    done = await svc.wait_for(tid, "done")
    assert deploy_hook.calls == []
    assert "denied: not on a friday" in llm_server.prompts()[-1]
    assert types(done)[-3:] == ["human_response", "action", "done_for_now"]
    assert done["events"][-3]["data"]["approved"] is False


async def test_clarification_round_trip(svc: Service, llm_server: FakeLLMServer) -> None:
    llm_server.script(
        act("request_more_information", message="Backend or frontend?"),
        act("done_for_now", message="Understood: the frontend."),
    )
    tid = (await launch(svc, "deploy please"))["thread_id"]
    asking = await svc.wait_for(tid, "awaiting_response")
    assert asking["events"][-1] == {**asking["events"][-1], "type": "information_requested"}
    assert asking["events"][-1]["data"] == {"question": "Backend or frontend?"}
    r = await svc.client.post(
        f"/thread/{tid}/response", json={"type": "response", "response": "the frontend"}
    )
    assert r.status_code == 202
    await svc.wait_for(tid, "done")
    assert "the frontend" in llm_server.prompts()[-1]
    assert "<human_response" in llm_server.prompts()[-1]


async def test_a_response_to_a_done_thread_continues_it(
    svc: Service, llm_server: FakeLLMServer
) -> None:
    llm_server.script(act("done_for_now", message="hello"), act("done_for_now", message="again"))
    tid = (await launch(svc, "hi"))["thread_id"]
    await svc.wait_for(tid, "done")
    r = await svc.client.post(
        f"/thread/{tid}/response", json={"type": "response", "response": "one more"}
    )
    assert r.status_code == 202
    thread = await svc.wait_for(tid, "done")
    assert types(thread) == [
        "user_message",
        "action",
        "done_for_now",
        "user_message",
        "action",
        "done_for_now",
    ]
    assert thread["events"][-1]["data"]["message"] == "again"


async def test_three_malformed_outputs_escalate(svc: Service, llm_server: FakeLLMServer) -> None:
    llm_server.script(
        Raw("I think we should deploy!"),  # no tool call, not JSON
        act("deploy_backend"),  # missing the tag
        act("launch_rockets"),  # not an action of this agent
        act("done_for_now", message="Sorry; stopping."),
    )
    tid = (await launch(svc))["thread_id"]
    escalated = await svc.wait_for(tid, "awaiting_response")
    assert types(escalated) == ["user_message", "error", "error", "error", "escalated"]
    kinds = [e["data"]["kind"] for e in escalated["events"][1:4]]
    assert kinds == ["invalid_output"] * 3
    assert "tag" in escalated["events"][2]["data"]["message"]
    reason = escalated["events"][-1]["data"]["reason"]
    assert reason.startswith("I stopped after 3 failures in a row") and "launch_rockets" in reason
    # A person answers; the agent goes on.
    await svc.client.post(
        f"/thread/{tid}/response", json={"type": "response", "response": "just stop"}
    )
    await svc.wait_for(tid, "done")


async def test_provider_500_then_success(svc: Service, llm_server: FakeLLMServer) -> None:
    llm_server.script(Fail(500, "upstream exploded"), act("done_for_now", message="ok"))
    tid = (await launch(svc, "hi"))["thread_id"]
    thread = await svc.wait_for(tid, "done")
    assert types(thread) == ["user_message", "error", "action", "done_for_now"]
    assert thread["events"][1]["data"]["kind"] == "llm"
    assert "500" in thread["events"][1]["data"]["message"]
    assert len(llm_server.requests) == 2  # the engine retried, litellm did not


async def test_deploy_webhook_failure_is_a_tool_error(
    svc: Service, llm_server: FakeLLMServer, deploy_hook: HttpSink
) -> None:
    deploy_hook.statuses.append(503)
    llm_server.script(
        act("deploy_frontend", tag="v1.0.0"), act("done_for_now", message="deploy failed")
    )
    tid = (await launch(svc, "deploy frontend v1.0.0"))["thread_id"]
    await svc.wait_for(tid, "awaiting_approval")
    await svc.client.post(f"/thread/{tid}/response", json={"type": "approval", "approved": True})
    thread = await svc.wait_for(tid, "done")
    error = next(e for e in thread["events"] if e["type"] == "error")
    assert error["data"]["kind"] == "tool" and "503" in error["data"]["message"]
    assert '<error kind="tool">' in llm_server.prompts()[-1]
    assert len(deploy_hook.calls) == 1


async def test_repeated_idempotency_key(svc: Service, llm_server: FakeLLMServer) -> None:
    llm_server.script(
        act("request_more_information", message="which?"), act("done_for_now", message="ok")
    )
    headers = {"Idempotency-Key": "launch-1"}
    first = await svc.client.post("/thread", json={"message": "deploy"}, headers=headers)
    again = await svc.client.post("/thread", json={"message": "deploy"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    tid = first.json()["thread_id"]
    await svc.wait_for(tid, "awaiting_response")

    body = {"type": "response", "response": "backend"}
    h2 = {"Idempotency-Key": "answer-1"}
    r1 = await svc.client.post(f"/thread/{tid}/response", json=body, headers=h2)
    r2 = await svc.client.post(f"/thread/{tid}/response", json=body, headers=h2)
    assert r1.status_code == r2.status_code == 202 and r1.json() == r2.json()
    thread = await svc.wait_for(tid, "done")
    assert types(thread).count("human_response") == 1
    # The same key with a different request is refused, and changes nothing.
    other = await svc.client.post("/thread", json={"message": "something else"}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    listed = await svc.client.get(f"/thread/{tid}")
    assert len(listed.json()["events"]) == len(thread["events"])


async def test_client_errors_append_nothing(svc: Service, llm_server: FakeLLMServer) -> None:
    llm_server.script(act("request_more_information", message="which?"))
    assert (await svc.client.get("/thread/does-not-exist")).status_code == 404
    r = await svc.client.post(
        "/thread/does-not-exist/response", json={"type": "response", "response": "x"}
    )
    assert r.status_code == 404 and "not found" in r.json()["detail"]

    tid = (await launch(svc))["thread_id"]
    before = await svc.wait_for(tid, "awaiting_response")

    approval = await svc.client.post(
        f"/thread/{tid}/response", json={"type": "approval", "approved": True}
    )
    assert approval.status_code == 409
    assert "awaiting_response" in approval.json()["detail"]
    for bad in (
        {},
        {"type": "approval"},
        {"type": "approval", "approved": "maybe"},
        {"type": "response", "response": ""},
        {"type": "response", "response": "x", "extra": 1},
        {"type": "vote", "response": "x"},
    ):
        r = await svc.client.post(f"/thread/{tid}/response", json=bad)
        assert r.status_code == 422, (bad, r.text)
    bad_json = await svc.client.post(
        f"/thread/{tid}/response",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 422
    for bad in ({}, {"message": ""}, {"message": 5}, {"message": "x", "agent": "nobody"}):
        assert (await svc.client.post("/thread", json=bad)).status_code == 422, bad
    after = (await svc.client.get(f"/thread/{tid}")).json()
    assert after["events"] == before["events"]
    assert len(llm_server.requests) == 1


async def test_approval_when_not_awaiting_one_is_409(
    svc: Service, llm_server: FakeLLMServer
) -> None:
    llm_server.script(act("deploy_backend", tag="v1.0.0"))
    tid = (await launch(svc))["thread_id"]
    await svc.wait_for(tid, "awaiting_approval")
    r = await svc.client.post(
        f"/thread/{tid}/response", json={"type": "response", "response": "hello"}
    )
    assert r.status_code == 409


async def test_healthz_and_openapi(svc: Service) -> None:
    assert (await svc.client.get("/healthz")).json() == {"status": "ok"}
    spec = (await svc.client.get("/openapi.json")).json()
    assert {"/thread", "/thread/{thread_id}", "/thread/{thread_id}/response"} <= set(spec["paths"])


async def test_bearer_token_is_required_when_configured(
    database_url: str, llm_server: FakeLLMServer, deploy_hook: HttpSink, git_repo: Path
) -> None:
    settings = make_settings(database_url, llm_server, api_token="s3cret-token")
    async with serve(settings, deploybot_agents(git_repo, deploy_hook)) as svc:
        assert (await svc.client.post("/thread", json={"message": "x"})).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (
            await svc.client.post("/thread", json={"message": "x"}, headers=wrong)
        ).status_code == 401
        assert (await svc.client.get("/thread/x", headers=wrong)).status_code == 401
        assert (await svc.client.get("/healthz")).status_code == 200
        llm_server.script(act("done_for_now", message="hi"))
        ok = {"Authorization": "Bearer s3cret-token"}
        assert (
            await svc.client.post("/thread", json={"message": "x"}, headers=ok)
        ).status_code == 201


async def test_step_cap_escalates(
    database_url: str, llm_server: FakeLLMServer, deploy_hook: HttpSink, git_repo: Path
) -> None:
    llm_server.responder = lambda body: act("list_git_tags")  # a model stuck in a loop
    settings = make_settings(database_url, llm_server, step_cap=4)
    async with serve(settings, deploybot_agents(git_repo, deploy_hook)) as svc:
        tid = (await launch(svc, "list tags forever"))["thread_id"]
        thread = await svc.wait_for(tid, "awaiting_response")
    assert types(thread).count("action") == 4 and len(llm_server.requests) == 4
    assert thread["events"][-1]["data"]["reason"] == (
        "I reached the limit of 4 steps without hearing from a person."
    )


async def test_an_approval_for_an_older_request_is_refused(
    svc: Service, llm_server: FakeLLMServer, deploy_hook: HttpSink
) -> None:
    llm_server.script(act("deploy_backend", tag="v1.2.0"))
    tid = (await launch(svc))["thread_id"]
    waiting = await svc.wait_for(tid, "awaiting_approval")
    request_seq = waiting["events"][-1]["seq"]
    stale = {"type": "approval", "approved": True, "request_seq": request_seq - 1}
    r = await svc.client.post(f"/thread/{tid}/response", json=stale)
    assert r.status_code == 409
    ok = {"type": "approval", "approved": False, "comment": "no", "request_seq": request_seq}
    llm_server.script(act("done_for_now", message="fine"))
    assert (await svc.client.post(f"/thread/{tid}/response", json=ok)).status_code == 202
    await svc.wait_for(tid, "done")
    assert deploy_hook.calls == []


async def test_concurrent_retries_with_one_key_get_the_first_answer(
    svc: Service, llm_server: FakeLLMServer
) -> None:
    import asyncio

    llm_server.script(
        act("request_more_information", message="which?"), act("done_for_now", message="ok")
    )
    tid = (await launch(svc))["thread_id"]
    await svc.wait_for(tid, "awaiting_response")
    body = {"type": "response", "response": "backend"}
    headers = {"Idempotency-Key": "same"}
    answers = await asyncio.gather(
        *(svc.client.post(f"/thread/{tid}/response", json=body, headers=headers) for _ in range(4))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.text for a in answers}) == 1
    thread = await svc.wait_for(tid, "done")
    assert types(thread).count("human_response") == 1
