"""What the bot tells a person: one tagged, frozen union, stored in the outbox.

The core decides, once, which events reach whom and through which channel
(``app/contacts.py``); a channel's sender only renders and delivers the contact it is given,
by its ``kind``. ``audience`` says who it is for: the thread's own conversation (a Slack
thread, the customer who wrote), or the people who may decide (``approvers``). ``to`` lists
the addresses the core knows for them (email approvers of this very call, the customer).

Every contact also carries the event it tells of (``event``: type and data, as stored), which
the outbound webhook passes on as it always has.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Audience = Literal["thread", "requester", "approvers"]


class Conversation(BaseModel):
    """An email thread's threading facts: who started it, its subject, and the messages so
    far (inbound Message-IDs as ``ref``, our own earlier messages as the ``seq`` they had)."""

    model_config = ConfigDict(frozen=True)
    requester: str | None = None
    subject: str = "your request"
    messages: list[dict[str, Any]] = Field(default_factory=list)
    thread_index: str | None = None  # the Outlook Thread-Index root the customer's mail had


class _Contact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    thread_id: str
    agent: str
    thread_channel: str
    channel_key: str | None = None
    seq: int  # the event it tells of
    audience: Audience = "thread"
    to: list[str] = Field(default_factory=list)
    response_url: str = ""
    event: dict[str, Any] = Field(default_factory=dict)  # {"type", "data"} as stored
    conversation: Conversation | None = None


class Request(BaseModel):
    """The open request a contact is about: an approval (``intent``, ``arguments``) or a
    question (``question``)."""

    model_config = ConfigDict(frozen=True)
    seq: int
    type: str
    intent: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    digest: str | None = None
    question: str | None = None


class Seen(_Contact):
    """A person's message in a thread of ours was received (Slack's :eyes: reaction)."""

    kind: Literal["seen"] = "seen"
    ref: str


class ApprovalRequest(_Contact):
    kind: Literal["approval_request"] = "approval_request"
    request: Request
    why: str | None = None


class Reminder(_Contact):
    """A durable timer fired: the same people again (reminder), or an escalation."""

    kind: Literal["reminder"] = "reminder"
    step: Literal["reminder", "escalation"]
    request: Request | None = None


class Decided(_Contact):
    """A pending approval ended: approved, rejected, cancelled or timed out."""

    kind: Literal["decided"] = "decided"
    request: Request | None = None
    verdict: Literal["approved", "rejected", "cancelled", "timed_out"]
    by: str | None = None
    by_channel: str | None = None
    comment: str | None = None
    why: str | None = None


class Question(_Contact):
    kind: Literal["question"] = "question"
    text: str


class Result(_Contact):
    """The agent finished its turn (``done_for_now``)."""

    kind: Literal["result"] = "result"
    text: str


class Attention(_Contact):
    """The engine stopped and asks a person what to do (an escalation)."""

    kind: Literal["attention"] = "attention"
    text: str


class Notice(_Contact):
    """A short direct answer to one person about their own message (how to decide, say)."""

    kind: Literal["notice"] = "notice"
    text: str
    in_reply_to: str | None = None
    subject: str | None = None


Contact = Annotated[
    Seen | ApprovalRequest | Reminder | Decided | Question | Result | Attention | Notice,
    Field(discriminator="kind"),
]

CONTACT_ADAPTER: TypeAdapter[Contact] = TypeAdapter(Contact)


def contact_of(payload: dict[str, Any]) -> Contact:
    """An outbox row's payload as the contact it holds (ValueError if it holds none)."""
    return CONTACT_ADAPTER.validate_python(payload)
