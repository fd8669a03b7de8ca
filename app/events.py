"""The thread's events: the only state a thread has (factor 5).

One tagged, frozen union; ``type`` is the stable tag that is stored. The stored row keeps the
tag in its own column and the remaining fields as JSON ``data``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Channel = Literal["api", "slack", "email", "timer", "system", "link", "operator"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UserMessage(_Event):
    """Someone wrote to the bot: the first message of a thread, or a later one."""

    type: Literal["user_message"] = "user_message"
    text: str
    channel: Channel = "api"
    author: str | None = None
    ref: str | None = None  # the channel's id for the message (an email's Message-ID)
    subject: str | None = None  # an email's subject
    # The channel proved the author is who they say (Slack's signature, an email that passed
    # DKIM/DMARC at our receiving server, an API token); None: not known.
    verified: bool | None = None


class ActionChosen(_Event):
    """The model chose a next step. ``action`` is the validated action, tag included."""

    type: Literal["action"] = "action"
    action: dict[str, Any]
    model: str | None = None
    mode: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None

    @property
    def intent(self) -> str:
        return str(self.action["intent"])


class ToolStarted(_Event):
    """Recorded before a tool that was approved runs, so a crash cannot run it twice unseen."""

    type: Literal["tool_started"] = "tool_started"
    intent: str
    action: dict[str, Any]
    action_seq: int


class ToolResult(_Event):
    type: Literal["tool_result"] = "tool_result"
    intent: str
    result: str
    action_seq: int
    latency_ms: float | None = None


class ErrorEvent(_Event):
    """A compact error (factor 9): what failed, in one line the model can read."""

    type: Literal["error"] = "error"
    kind: Literal["llm", "invalid_output", "timeout", "tool", "step_cap"]
    message: str
    action_seq: int | None = None  # the action that failed, for a tool's error


class ApprovalRequested(_Event):
    """A gated call waits for a person who may decide. ``requested_by`` is the principal who
    wrote last before it (``channel:id``), ``requesters`` everyone who wrote in the task that
    led to it (for four-eyes: none of them may approve it); ``digest`` names exactly these
    arguments: a decision for any other call does not count."""

    type: Literal["approval_requested"] = "approval_requested"
    intent: str
    arguments: dict[str, Any]
    action_seq: int
    requested_by: str | None = None
    digest: str | None = None
    requesters: list[str] | None = None


class HumanResponse(_Event):
    """A person answered: an approval decision, a cancel of the pending request, or free text.

    A decision names the request it decides (``request_seq``) and carries its ``evidence``:
    who decided, how the channel proved it, and the digest of the arguments decided on."""

    type: Literal["human_response"] = "human_response"
    kind: Literal["approval", "response", "cancel"]
    approved: bool | None = None
    comment: str | None = None
    text: str | None = None
    author: str | None = None
    channel: Channel = "api"
    ref: str | None = None  # the channel's id for the message (an email's Message-ID)
    request_seq: int | None = None
    evidence: dict[str, Any] | None = None


class InformationRequested(_Event):
    type: Literal["information_requested"] = "information_requested"
    question: str


class Escalated(_Event):
    """The engine itself stopped and asked a person what to do, with a short account."""

    type: Literal["escalated"] = "escalated"
    reason: str


class TimerFired(_Event):
    """A durable timer fired while a person was asked: a reminder, or an escalation."""

    type: Literal["timer_fired"] = "timer_fired"
    kind: Literal["reminder", "escalation"]
    request_seq: int


class Retried(_Event):
    """An operator asked for the failed step to be tried again (``relaybot threads retry``)."""

    type: Literal["retried"] = "retried"
    author: str | None = None


class DoneForNow(_Event):
    type: Literal["done_for_now"] = "done_for_now"
    message: str


Event = Annotated[
    UserMessage
    | ActionChosen
    | ToolStarted
    | ToolResult
    | ErrorEvent
    | ApprovalRequested
    | HumanResponse
    | InformationRequested
    | Escalated
    | TimerFired
    | Retried
    | DoneForNow,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def arguments_digest(intent: str, arguments: Mapping[str, Any]) -> str:
    """A short, stable name for exactly this call: the intent and its arguments."""
    blob = json.dumps(
        {"intent": intent, "arguments": arguments},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def event_data(event: _Event) -> dict[str, Any]:
    """The JSON stored in ``events.data``: every field but the tag."""
    return event.model_dump(mode="json", exclude={"type"}, exclude_none=True)


def event_from_row(type_: str, data: dict[str, Any]) -> Event:
    return EVENT_ADAPTER.validate_python({"type": type_, **data})


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: its place in the thread, who caused it, and when."""

    seq: int
    event: Event
    actor: str | None
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.event.type,
            "data": event_data(self.event),
            "actor": self.actor,
            "created_at": self.created_at.isoformat(),
        }
