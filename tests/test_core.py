"""The pure core: projections and decisions are functions of the event list."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agents import deploybot
from app import core
from app.agent import Agent
from app.events import (
    ActionChosen,
    ApprovalRequested,
    DoneForNow,
    ErrorEvent,
    Escalated,
    Event,
    HumanResponse,
    InformationRequested,
    StoredEvent,
    ToolResult,
    ToolStarted,
    UserMessage,
    arguments_digest,
)

AGENT: Agent = deploybot.build(deploybot.DeploybotSettings())
DEPLOY = {"intent": "deploy_backend", "tag": "v1"}
TAGS = {"intent": "list_git_tags"}


T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def stored(*events: Event, at: datetime = T0) -> list[StoredEvent]:
    return [StoredEvent(i, e, None, at) for i, e in enumerate(events, 1)]


def state_of(*events: Event) -> tuple[core.ThreadState, Event | None]:
    return core.project(stored(*events)), (events[-1] if events else None)


def move(*events: Event, step_cap: int = 20, now: datetime = T0, agent: Agent = AGENT) -> core.Move:
    return core.next_move(core.project(stored(*events)), agent, step_cap, now)


HELLO = UserMessage(text="deploy")


def test_status_follows_the_last_meaningful_event() -> None:
    assert state_of(HELLO)[0].status == "running"
    asked = ApprovalRequested(intent="deploy_backend", arguments={"tag": "v1"}, action_seq=2)
    assert state_of(HELLO, ActionChosen(action=DEPLOY), asked)[0].status == "awaiting_approval"
    assert state_of(HELLO, InformationRequested(question="?"))[0].status == "awaiting_response"
    assert state_of(HELLO, DoneForNow(message="ok"))[0].status == "done"
    assert (
        state_of(HELLO, DoneForNow(message="ok"), UserMessage(text="more"))[0].status == "running"
    )


def test_a_new_message_asks_the_model() -> None:
    assert move(HELLO) == core.CallModel()
    assert move() == core.Idle()
    assert move(HELLO, DoneForNow(message="x")) == core.Idle()


def test_an_idempotent_tool_chosen_is_run_without_a_start_record() -> None:
    assert move(HELLO, ActionChosen(action=TAGS)) == core.RunTool(2, TAGS, record_start=False)
    after = move(
        HELLO,
        ActionChosen(action=TAGS),
        ToolResult(intent="list_git_tags", result="[]", action_seq=2),
    )
    assert after == core.CallModel()


def test_approval_runs_the_approved_action_with_a_start_record() -> None:
    asked = ApprovalRequested(intent="deploy_backend", arguments={"tag": "v1"}, action_seq=2)
    yes = HumanResponse(kind="approval", approved=True)
    assert move(HELLO, ActionChosen(action=DEPLOY), asked, yes) == core.RunTool(
        2, DEPLOY, record_start=True
    )
    no = HumanResponse(kind="approval", approved=False, comment="no")
    assert move(HELLO, ActionChosen(action=DEPLOY), asked, no) == core.CallModel()


def test_an_interrupted_non_idempotent_tool_is_not_rerun() -> None:
    asked = ApprovalRequested(intent="deploy_backend", arguments={"tag": "v1"}, action_seq=2)
    started = ToolStarted(intent="deploy_backend", action=DEPLOY, action_seq=2)
    decided = move(
        HELLO,
        ActionChosen(action=DEPLOY),
        asked,
        HumanResponse(kind="approval", approved=True),
        started,
    )
    assert isinstance(decided, core.Escalate) and "deploy_backend" in decided.reason


def test_after_an_interrupted_tool_is_escalated_the_answer_goes_to_the_model() -> None:
    asked = ApprovalRequested(intent="deploy_backend", arguments={"tag": "v1"}, action_seq=2)
    yes = HumanResponse(kind="approval", approved=True)
    started = ToolStarted(intent="deploy_backend", action=DEPLOY, action_seq=2)
    escalated = Escalated(reason="interrupted")
    answer = HumanResponse(kind="response", text="it ran")
    history = (HELLO, ActionChosen(action=DEPLOY), asked, yes, started, escalated)
    assert move(*history) == core.Idle()
    assert move(*history, answer) == core.CallModel()  # not the same question again


def test_a_message_does_not_erase_an_interrupted_deploy() -> None:
    asked = ApprovalRequested(intent="deploy_backend", arguments={"tag": "v1"}, action_seq=2)
    started = ToolStarted(intent="deploy_backend", action=DEPLOY, action_seq=2)
    history = (
        HELLO,
        ActionChosen(action=DEPLOY),
        asked,
        HumanResponse(kind="approval", approved=True),
    )
    decided = move(*history, started, UserMessage(text="status?"))
    assert isinstance(decided, core.Escalate) and "interrupted" in decided.reason


def test_three_errors_in_a_row_escalate_and_a_success_resets() -> None:
    err = ErrorEvent(kind="invalid_output", message="bad")
    assert move(HELLO, err, err) == core.CallModel()
    three = move(HELLO, err, err, err)
    assert isinstance(three, core.Escalate) and "3 failures" in three.reason
    ok = ToolResult(intent="list_git_tags", result="[]", action_seq=3)
    assert move(HELLO, err, ActionChosen(action=TAGS), ok, err, err) == core.CallModel()


def test_step_cap_escalates_until_a_person_speaks() -> None:
    steps: list[Event] = [HELLO]
    for i in range(3):
        steps += [
            ActionChosen(action=TAGS),
            ToolResult(intent="list_git_tags", result="[]", action_seq=2 + 2 * i),
        ]
    capped = move(*steps, step_cap=3)
    assert isinstance(capped, core.Escalate) and "3 steps" in capped.reason
    assert (
        move(*steps, HumanResponse(kind="response", text="go on"), step_cap=3) == core.CallModel()
    )


def test_consequences_of_each_kind_of_action() -> None:
    assert core.consequences(2, TAGS, AGENT) == []
    assert core.consequences(2, DEPLOY, AGENT, "slack:UALICE") == [
        ApprovalRequested(
            intent="deploy_backend",
            arguments={"tag": "v1"},
            action_seq=2,
            requested_by="slack:UALICE",
            digest=arguments_digest("deploy_backend", {"tag": "v1"}),
            requesters=["slack:UALICE"],
        )
    ]
    ask = {"intent": "request_more_information", "message": "which?"}
    assert core.consequences(2, ask, AGENT) == [InformationRequested(question="which?")]
    done = {"intent": "done_for_now", "message": "bye"}
    assert core.consequences(2, done, AGENT) == [DoneForNow(message="bye")]


def test_everyone_who_asked_in_the_task_is_a_requester_for_four_eyes() -> None:
    """A bystander's word just before the model acts does not make the asker an approver."""
    from app.decisions import decision_event
    from app.errors import NotAllowed
    from app.policy import ApprovalPolicy, Principal

    alice = UserMessage(text="deploy", channel="slack", author="UALICE")
    chatter = UserMessage(text="+1", channel="slack", author="UMAL")
    state = core.project(stored(alice, chatter))
    assert state.task_authors == {"slack:UALICE", "slack:UMAL"}
    asked = core.consequences(3, DEPLOY, AGENT, state.last_author, requesters=state.task_authors)
    waiting = core.project(stored(alice, chatter, ActionChosen(action=DEPLOY), *asked))
    policy = ApprovalPolicy(frozenset({"slack:UALICE", "slack:UBOB"}), four_eyes=True)
    alice_p = Principal("slack", "UALICE", "test")
    with pytest.raises(NotAllowed, match="four-eyes"):
        decision_event("t", waiting, "approval", alice_p, policy, approved=True)
    bob = Principal("slack", "UBOB", "test")
    assert decision_event("t", waiting, "approval", bob, policy, approved=True).approved
    # The one who asked may still withdraw it.
    assert decision_event("t", waiting, "cancel", alice_p, policy).kind == "cancel"
    done = core.project(stored(alice, chatter, DoneForNow(message="ok")))
    assert done.task_authors == frozenset()  # a new task starts with the next message
