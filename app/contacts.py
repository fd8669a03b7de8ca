"""Which events reach a person, whom, and through which outbound channel (factor 7).

Decided here, once, for every channel: a thread answers in the channel it came from (Slack
threads in their Slack thread, email to the customer who wrote, API threads to
``API_WEBHOOK_URL`` when set); a message someone writes in a Slack thread of ours is a contact
too (the :eyes: reaction). Approval traffic (the request, its reminders, its outcome) goes to
the people who may decide: in the Slack thread itself, and for threads that did not start in
Slack through the agent's approval routes (its Slack approval channel; email, to the
addresses the call's policy lists). A customer who emailed never gets approval traffic.
The resulting outbox rows are written in the same transaction as the events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.contact import (
    ApprovalRequest,
    Attention,
    Audience,
    Contact,
    Conversation,
    Decided,
    Notice,
    Question,
    Reminder,
    Request,
    Result,
    Seen,
)
from app.events import (
    ApprovalRequested,
    DoneForNow,
    Escalated,
    Event,
    HumanResponse,
    InformationRequested,
    StoredEvent,
    TimerFired,
    UserMessage,
    event_data,
)
from app.policy import Policies
from app.store import OutboxMessage


@dataclass(frozen=True)
class Reply:
    """A short answer to the person whose message it goes with (``Notice``)."""

    to: str
    text: str
    in_reply_to: str | None = None
    subject: str | None = None


class Contacts:
    def __init__(
        self,
        routes: Mapping[str, str],
        base_url: str,
        approval_routes: Mapping[str, Sequence[str]] | None = None,
        policies: Policies | None = None,
    ) -> None:
        """``routes``: thread channel -> outbound channel, for the channels configured.
        ``approval_routes``: agent -> outbound channels for the approvals of threads that
        cannot be approved where they started (API, email: a customer does not approve)."""
        self.routes = dict(routes)
        self.approval_routes = {k: list(v) for k, v in (approval_routes or {}).items()}
        self.base_url = base_url
        self.policies = policies or Policies()

    def messages(
        self,
        *,
        thread_id: str,
        agent: str,
        channel: str,
        channel_key: str | None,
        history: Sequence[StoredEvent],
        new: Sequence[Event],
    ) -> list[OutboxMessage]:
        found: list[OutboxMessage] = []
        seq = history[-1].seq if history else 0
        events = list(history)
        for event in new:
            seq += 1
            base = {
                "thread_id": thread_id,
                "agent": agent,
                "thread_channel": channel,
                "channel_key": channel_key,
                "seq": seq,
                "response_url": f"{self.base_url}/thread/{thread_id}/response",
                "event": {"type": event.type, "data": event_data(event)},
            }
            for route, audience, to in self._routes(agent, channel, event, events):
                fields = base | {"audience": audience, "to": to}
                if _is_slack_message(event, channel):
                    contact: Contact | None = Seen(**fields, ref=str(getattr(event, "ref", "")))
                else:
                    contact = _contact(fields, event, events)
                if contact is None:
                    continue
                if route == "email" and channel == "email":
                    contact = contact.model_copy(update={"conversation": _conversation(events)})
                found.append(OutboxMessage(route, contact.model_dump(mode="json")))
            events.append(StoredEvent(seq, event, None, _UNDATED))
        return found

    def notice(
        self, *, thread_id: str, agent: str, channel: str, seq: int, reply: Reply
    ) -> OutboxMessage:
        """A direct answer to one person about their own message, sent with the event that
        records the message (at its ``seq``), through the channel it came from."""
        contact = Notice(
            thread_id=thread_id,
            agent=agent,
            thread_channel=channel,
            seq=seq,
            audience="requester",
            to=[reply.to],
            text=reply.text,
            in_reply_to=reply.in_reply_to,
            subject=reply.subject,
        )
        return OutboxMessage(self.routes.get(channel, channel), contact.model_dump(mode="json"))

    def _routes(
        self, agent: str, channel: str, event: Event, history: Sequence[StoredEvent]
    ) -> list[tuple[str, Audience, list[str]]]:
        """(outbound channel, audience, known addresses) for each copy of the contact."""
        if _is_slack_message(event, channel):
            return [("slack", "thread", [])]
        if not _is_contact(event):
            return []
        request = _open_request(history) if not isinstance(event, ApprovalRequested) else None
        intent = event.intent if isinstance(event, ApprovalRequested) else _intent(request)
        for_approvers = _is_approval_traffic(event, history) or (
            channel == "email" and isinstance(event, Escalated)
        )
        own = self.routes.get(channel)
        found: list[tuple[str, Audience, list[str]]] = []
        if own is not None and not (channel == "email" and for_approvers):
            requester = _requester(history) if channel == "email" else None
            found.append((own, "thread", [requester] if requester else []))
        if for_approvers and channel != "slack":
            for route in self.approval_routes.get(agent, []):
                to = self._approver_addresses(agent, intent) if route == "email" else []
                if route == "email" and not to:
                    continue  # this call's policy names nobody to email
                if route != own or channel == "email":
                    found.append((route, "approvers", to))
        return found

    def _approver_addresses(self, agent: str, intent: str | None) -> list[str]:
        if intent is None:
            return sorted(self.policies.everyone(agent, "email"))
        return sorted(self.policies.for_call(agent, intent).ids("email"))


_UNDATED = datetime(2000, 1, 1, tzinfo=UTC)  # contacts never read an event's date


def _contact(base: dict[str, Any], event: Event, history: Sequence[StoredEvent]) -> Contact | None:
    opened = _open_request(history)
    request = _request(opened)
    match event:
        case ApprovalRequested():
            asked = Request(
                seq=base["seq"],
                type=event.type,
                intent=event.intent,
                arguments=dict(event.arguments),
                digest=event.digest,
            )
            return ApprovalRequest(**base, request=asked, why=_last_request_text(history))
        case TimerFired():
            return Reminder(**base, step=event.kind, request=request)
        case HumanResponse() if event.kind != "response":
            verdict = (
                "cancelled"
                if event.kind == "cancel"
                else "timed_out"
                if event.channel == "timer"
                else "approved"
                if event.approved
                else "rejected"
            )
            return Decided(
                **base,
                request=request,
                verdict=verdict,
                by=event.author,
                by_channel=event.channel,
                comment=event.comment,
                why=_last_request_text(history[: opened.seq - 1] if opened else history),
            )
        case InformationRequested():
            return Question(**base, text=event.question)
        case DoneForNow():
            return Result(**base, text=event.message)
        case Escalated():
            return Attention(**base, text=event.reason)
    return None


def _request(stored: StoredEvent | None) -> Request | None:
    if stored is None:
        return None
    event = stored.event
    if isinstance(event, ApprovalRequested):
        return Request(
            seq=stored.seq,
            type=event.type,
            intent=event.intent,
            arguments=dict(event.arguments),
            digest=event.digest,
        )
    if isinstance(event, InformationRequested):
        return Request(seq=stored.seq, type=event.type, question=event.question)
    if isinstance(event, Escalated):
        return Request(seq=stored.seq, type=event.type, question=event.reason)
    return None


def _intent(stored: StoredEvent | None) -> str | None:
    return stored.event.intent if stored and isinstance(stored.event, ApprovalRequested) else None


def _is_slack_message(event: Event, thread_channel: str) -> bool:
    """A person's message in a Slack thread of ours (its ``ref`` is the message's ts)."""
    if thread_channel != "slack" or not isinstance(event, UserMessage | HumanResponse):
        return False
    written = isinstance(event, UserMessage) or event.kind == "response"
    return written and event.channel == "slack" and bool(event.ref)


CONTACT_EVENTS = (ApprovalRequested, InformationRequested, Escalated, DoneForNow, TimerFired)


def _is_contact(event: Event) -> bool:
    # A decided approval is news too: the request's message can show the outcome.
    return isinstance(event, CONTACT_EVENTS) or (
        isinstance(event, HumanResponse) and event.kind in ("approval", "cancel")
    )


def _is_approval_traffic(event: Event, history: Sequence[StoredEvent]) -> bool:
    if isinstance(event, ApprovalRequested):
        return True
    if isinstance(event, HumanResponse):
        return event.kind in ("approval", "cancel")
    if isinstance(event, TimerFired):
        request = _open_request(history)
        return request is not None and isinstance(request.event, ApprovalRequested)
    return False


def _last_request_text(history: Sequence[StoredEvent]) -> str | None:
    for stored in reversed(history):
        if isinstance(stored.event, UserMessage):
            slack = stored.event.channel == "slack" and stored.event.author
            return (
                f"<@{stored.event.author}> asked: {stored.event.text}"
                if slack
                else stored.event.text
            )
    return None


def _requester(history: Sequence[StoredEvent]) -> str | None:
    first = next((s.event for s in history if isinstance(s.event, UserMessage)), None)
    return first.author if first else None


def _conversation(history: Sequence[StoredEvent]) -> Conversation:
    """Who started the email thread, its subject, and the messages so far (for threading):
    inbound Message-IDs as ``ref``, our earlier messages to them as the ``seq`` they carried."""
    first = next((s.event for s in history if isinstance(s.event, UserMessage)), None)
    requester = first.author if first else None
    messages: list[dict[str, Any]] = []
    for stored in history:
        ev = stored.event
        # The customer's own messages only: an approver's reply is another conversation.
        if (
            isinstance(ev, UserMessage | HumanResponse)
            and (isinstance(ev, UserMessage) or ev.kind == "response")
            and ev.channel == "email"
            and ev.ref
            and ev.author == requester
        ):
            messages.append({"ref": ev.ref})
        elif isinstance(ev, InformationRequested | DoneForNow):
            messages.append({"seq": stored.seq})
    return Conversation(
        requester=first.author if first else None,
        subject=(first.subject if first else None) or "your request",
        messages=messages,
    )


def _open_request(history: Sequence[StoredEvent]) -> StoredEvent | None:
    for stored in reversed(history):
        if isinstance(stored.event, ApprovalRequested | InformationRequested | Escalated):
            return stored
    return None
