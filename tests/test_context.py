"""Owning the context window: compact blocks per event, and a token budget."""

from __future__ import annotations

from datetime import UTC, datetime

from agents import deploybot
from app.context import ContextRenderer, make_environment
from app.events import (
    ActionChosen,
    ApprovalRequested,
    ErrorEvent,
    Event,
    HumanResponse,
    ToolResult,
    UserMessage,
)
from app.store import StoredEvent

AGENT = deploybot.build(deploybot.DeploybotSettings())
MODEL = "openai/gpt-4o-mini"


def stored(*events: Event) -> list[StoredEvent]:
    now = datetime.now(UTC)
    return [StoredEvent(i, e, None, now) for i, e in enumerate(events, 1)]


def renderer(budget: int = 8000) -> ContextRenderer:
    return ContextRenderer(make_environment(), MODEL, budget)


def test_thread_renders_as_compact_blocks() -> None:
    events = stored(
        UserMessage(text="ship the backend", author="alice", channel="slack"),
        ActionChosen(action={"intent": "list_git_tags"}),
        ToolResult(intent="list_git_tags", result='["v2","v1"]', action_seq=2),
        ActionChosen(action={"intent": "deploy_backend", "tag": "v2"}),
        ApprovalRequested(intent="deploy_backend", arguments={"tag": "v2"}, action_seq=4),
        HumanResponse(kind="approval", approved=False, comment="freeze week", author="bob"),
        ErrorEvent(kind="tool", message="webhook down"),
    )
    ctx = renderer().render(AGENT, events)
    system, user = (m["content"] for m in ctx.messages)
    assert system.startswith("You are deploybot")
    assert user == (
        "<thread>\n"
        '<user_message from="alice" via="slack">\nship the backend\n</user_message>\n'
        "<list_git_tags>\n</list_git_tags>\n"
        '<list_git_tags_result>\n["v2","v1"]\n</list_git_tags_result>\n'
        "<deploy_backend>\ntag: v2\n</deploy_backend>\n"
        '<human_response from="bob" via="api">\ndenied: freeze week\n</human_response>\n'
        '<error kind="tool">\nwebhook down\n</error>\n'
        "</thread>\n\nWhat is the next step?"
    )
    assert ctx.tokens > 0 and ctx.result_cap is None


def test_long_tool_results_are_shortened_to_fit_the_budget() -> None:
    huge = "tag-" * 20_000
    events = stored(
        UserMessage(text="list them"),
        ActionChosen(action={"intent": "list_git_tags"}),
        ToolResult(intent="list_git_tags", result=huge, action_seq=2),
    )
    r = renderer(budget=1500)
    whole = r.count([{"role": "user", "content": huge}])
    assert whole > 1500
    ctx = r.render(AGENT, events)
    assert ctx.tokens <= 1500
    assert ctx.result_cap is not None
    assert "more characters not shown" in ctx.messages[1]["content"]
    assert "list them" in ctx.messages[1]["content"]  # people's words are never cut


def test_when_results_cannot_shrink_enough_old_events_are_left_out() -> None:
    events: list[Event] = [UserMessage(text="keep asking")]
    for i in range(300):
        events += [
            ActionChosen(action={"intent": "list_git_tags"}),
            ToolResult(intent="list_git_tags", result=f'["v{i}"]', action_seq=2 + 2 * i),
        ]
    ctx = renderer(budget=1500).render(AGENT, stored(*events))
    thread = ctx.messages[1]["content"]
    assert ctx.tokens <= 1500 and ctx.omitted > 0
    assert thread.startswith('<thread>\n<user_message via="api">\nkeep asking\n</user_message>\n')
    assert f'<omitted_events count="{ctx.omitted}">' in thread
    assert '["v299"]' in thread and '["v0"]' not in thread  # the newest stay


def test_tokens_are_counted_by_parts_within_a_hair_of_the_whole() -> None:
    """Each block is counted once and the counts summed: the budget holds what litellm's
    count of the whole request says, give or take where a token spans two blocks."""
    events: list[Event] = [UserMessage(text="ship the backend, then tell me", author="al")]
    for i in range(100):
        events += [
            ActionChosen(action={"intent": "list_git_tags"}),
            ToolResult(
                intent="list_git_tags", result=f'["v{i}.1", "v{i}.0"] ({i} tags)', action_seq=2
            ),
        ]
    for budget, n in ((8000, 3), (8000, 21), (8000, 201), (1500, 201)):
        r = renderer(budget)
        ctx = r.render(AGENT, stored(*events[:n]))
        whole = r.count(ctx.messages)
        assert abs(ctx.tokens - whole) <= max(2, whole // 200), (n, ctx.tokens, whole)
    assert ctx.omitted > 0  # the last one left events out, and counted the line saying so
