"""Structured output through litellm's real HTTP path, and the fallback between modes."""

from __future__ import annotations

import pytest

from agents import deploybot
from app.agent import Agent
from app.errors import LLMError
from app.llm import LiteLLM, tool_specs, union_schema
from tests.fakes.llm_server import Delay, Fail, FakeLLMServer, Raw, act

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "deploy"}]


@pytest.fixture
def agent() -> Agent:
    return deploybot.build(deploybot.DeploybotSettings())


def model(server: FakeLLMServer, **kw: object) -> LiteLLM:
    return LiteLLM("openai/test-model", api_base=server.base_url, **kw)  # type: ignore[arg-type]


async def test_tools_with_forced_choice_is_the_first_mode(
    llm_server: FakeLLMServer, agent: Agent
) -> None:
    llm_server.script(act("deploy_backend", tag="v1"))
    reply = await model(llm_server).choose(MESSAGES, agent)
    assert reply.action == {"intent": "deploy_backend", "tag": "v1"}
    assert reply.mode == "tools_required"
    assert (reply.prompt_tokens, reply.completion_tokens) == (100, 10)
    # litellm's own HTTP client (app/__init__.py), not the openai SDK's
    assert [ua.split("/")[0] for ua in llm_server.user_agents] == ["litellm"]
    sent = llm_server.requests[0]
    assert sent["tool_choice"] == "required"
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "list_git_tags",
        "deploy_backend",
        "deploy_frontend",
        "request_more_information",
        "done_for_now",
    ]
    deploy = sent["tools"][1]["function"]
    assert (
        deploy["parameters"]["required"] == ["tag"]
        and "intent" not in deploy["parameters"]["properties"]
    )
    assert "approve" in deploy["description"]


async def test_a_server_without_forced_tool_choice_gets_auto_and_it_is_remembered(
    llm_server: FakeLLMServer, agent: Agent
) -> None:
    """llama.cpp's server accepts tools only with tool_choice "auto"."""
    llm_server.refuse = {"tools_required"}
    llm_server.script(act("list_git_tags"), act("done_for_now", message="ok"))
    llm = model(llm_server)
    first = await llm.choose(MESSAGES, agent)
    second = await llm.choose(MESSAGES, agent)
    assert (first.mode, second.mode) == ("tools_auto", "tools_auto")
    assert second.action == {"intent": "done_for_now", "message": "ok"}
    assert llm_server.modes == ["refused:tools_required", "tools_auto", "tools_auto"]


async def test_falls_back_to_json_schema_then_json_object(
    llm_server: FakeLLMServer, agent: Agent
) -> None:
    llm_server.refuse = {"tools_required", "tools_auto"}
    llm_server.script(act("deploy_frontend", tag="v2"))
    reply = await model(llm_server).choose(MESSAGES, agent)
    assert (reply.mode, reply.action) == ("json_schema", {"intent": "deploy_frontend", "tag": "v2"})
    schema = llm_server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema == union_schema(agent) and schema["type"] == "object"

    llm_server.refuse |= {"json_schema"}
    llm_server.script(act("list_git_tags"))
    reply = await model(llm_server).choose(MESSAGES, agent)
    assert (reply.mode, reply.action) == ("json_object", {"intent": "list_git_tags"})
    sent = llm_server.requests[-1]
    assert sent["response_format"] == {"type": "json_object"}
    assert '"next_step"' in sent["messages"][-1]["content"]  # the schema is in the prompt


async def test_a_400_about_the_content_is_not_a_refused_mode(
    llm_server: FakeLLMServer, agent: Agent
) -> None:
    llm_server.script(Fail(400, "Your prompt was flagged by our content policy."))
    llm = model(llm_server)
    with pytest.raises(LLMError) as err:
        await llm.choose(MESSAGES, agent)
    assert err.value.kind == "provider" and "content policy" in err.value.message
    assert llm.mode == "tools_required" and len(llm_server.requests) == 1


async def test_every_mode_refused_is_an_error(llm_server: FakeLLMServer, agent: Agent) -> None:
    llm_server.refuse = {"tools_required", "tools_auto", "json_schema", "json_object"}
    with pytest.raises(LLMError) as err:
        await model(llm_server).choose(MESSAGES, agent)
    assert err.value.kind == "refused"


async def test_provider_errors_and_timeouts_are_typed(
    llm_server: FakeLLMServer, agent: Agent
) -> None:
    llm_server.script(Fail(503, "overloaded"), Delay(2.0, act("list_git_tags")), Raw("sure thing"))
    llm = model(llm_server, timeout=0.5)
    with pytest.raises(LLMError) as err:
        await llm.choose(MESSAGES, agent)
    assert err.value.kind == "provider" and "503" in err.value.message
    with pytest.raises(LLMError) as err:
        await llm.choose(MESSAGES, agent)
    assert err.value.kind == "timeout"
    with pytest.raises(LLMError) as err:
        await llm.choose(MESSAGES, agent)
    assert err.value.kind == "invalid_output" and "sure thing" in err.value.message
    assert llm.mode == "tools_required"  # failures are not refusals: the mode is kept


def test_tool_specs_cover_every_action(agent: Agent) -> None:
    names = {spec["function"]["name"] for spec in tool_specs(agent)}
    assert names == {m.model_fields["intent"].default for m in agent.action_models}
