"""Forks never replay a side effect: what a fork keeps of a thread's events (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from app.events import (
    ActionChosen,
    ApprovalRequested,
    ErrorEvent,
    Escalated,
    HumanResponse,
    StoredEvent,
    ToolResult,
)


def fork_prefix(events: Sequence[StoredEvent]) -> list[StoredEvent]:
    """What a fork keeps of ``events``: all of them up to the first tool call that was chosen
    and not finished (no result, no error, not rejected or cancelled), which is left out with
    everything after it. So a fork never holds a decision or a started call it could act on:
    a side effect happens again only after a new choice and, if gated, a new approval."""
    open_calls: dict[int, int] = {}  # action seq -> its index in events
    asked: int | None = None  # the action seq of the approval request last made
    for i, stored in enumerate(events):
        event = stored.event
        match event:
            case ActionChosen() if event.intent not in _HUMAN_INTENTS:
                open_calls[stored.seq] = i
            case ApprovalRequested():
                asked = event.action_seq
            case ToolResult():
                open_calls.pop(event.action_seq, None)
            case ErrorEvent() if event.action_seq is not None:
                open_calls.pop(event.action_seq, None)
            case HumanResponse() if event.kind != "response" and not event.approved:
                if asked is not None:  # rejected, cancelled or timed out: nothing ran
                    open_calls.pop(asked, None)
            case Escalated():
                open_calls.clear()  # an interrupted call is now a question for a person
    cut = min(open_calls.values(), default=len(events))
    return list(events[:cut])


_HUMAN_INTENTS = ("request_more_information", "done_for_now")
