"""Which events reach a person, and through which outbound channel (factor 7).

A thread answers in the channel it came from: Slack threads in Slack, email in email; a
message someone writes in a Slack thread of ours is a contact too (the :eyes: reaction). API
threads have no conversation to answer in; when ``API_WEBHOOK_URL`` is set, their contacts
are POSTed there. Approval traffic of a thread that did not start in Slack also goes to the
agent's Slack approval channel when one is configured. The resulting outbox rows are written
in the same transaction as the events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
from app.store import OutboxMessage

CONTACT_EVENTS = (ApprovalRequested, InformationRequested, Escalated, DoneForNow, TimerFired)


class Contacts:
    def __init__(
        self,
        routes: Mapping[str, str],
        base_url: str,
        approval_routes: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``routes``: thread channel -> outbound channel, for the channels configured.
        ``approval_routes``: agent -> outbound channels for the approvals of threads that
        cannot be approved where they started (API, email: a customer does not approve)."""
        self.routes = dict(routes)
        self.approval_routes = {k: list(v) for k, v in (approval_routes or {}).items()}
        self.base_url = base_url

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
        messages = []
        for event in new:
            if not (_is_contact(event) or _is_slack_message(event, channel)):
                continue
            approval = _is_approval_traffic(event, history)
            to_approvers: set[str | None] = set(self.approval_routes.get(agent, []))
            outbound: set[str | None]
            if channel == "email":  # the requester is a customer: approvals go to approvers
                internal = approval or isinstance(event, Escalated)
                outbound = to_approvers if internal else {self.routes.get("email")}
            else:
                outbound = {self.routes.get(channel)}
                if approval and channel != "slack":
                    outbound |= to_approvers
            payload = self._payload(thread_id, agent, channel, channel_key, event, history)
            messages += [OutboxMessage(o, payload) for o in sorted(filter(None, outbound))]
        return messages

    def _payload(
        self,
        thread_id: str,
        agent: str,
        channel: str,
        channel_key: str | None,
        event: Event,
        history: Sequence[StoredEvent],
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "thread_id": thread_id,
            "agent": agent,
            "thread_channel": channel,
            "channel_key": channel_key,
            "type": event.type,
            "data": event_data(event),
            "response_url": f"{self.base_url}/thread/{thread_id}/response",
        }
        request = _open_request(history)
        if isinstance(event, TimerFired | HumanResponse) and request is not None:
            payload["request"] = {
                "seq": request.seq,
                "type": request.event.type,
                "data": event_data(request.event),
            }
        if isinstance(event, ApprovalRequested | HumanResponse):
            payload["why"] = _last_request_text(history)
        if channel == "email":
            payload["email"] = _conversation(history)
        return payload


def _is_slack_message(event: Event, thread_channel: str) -> bool:
    """A person's message in a Slack thread of ours (its ``ref`` is the message's ts)."""
    if thread_channel != "slack" or not isinstance(event, UserMessage | HumanResponse):
        return False
    written = isinstance(event, UserMessage) or event.kind == "response"
    return written and event.channel == "slack" and bool(event.ref)


def _is_contact(event: Event) -> bool:
    # A decided approval is news too: the request's message can show the outcome.
    return isinstance(event, CONTACT_EVENTS) or (
        isinstance(event, HumanResponse) and event.kind == "approval"
    )


def _is_approval_traffic(event: Event, history: Sequence[StoredEvent]) -> bool:
    if isinstance(event, ApprovalRequested):
        return True
    if isinstance(event, HumanResponse):
        return event.kind == "approval"
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


def _conversation(history: Sequence[StoredEvent]) -> dict[str, Any]:
    """Who started the email thread, its subject, and the messages so far (for threading):
    inbound Message-IDs as ``ref``, our earlier messages to them as the ``seq`` they carried."""
    first = next((s.event for s in history if isinstance(s.event, UserMessage)), None)
    messages: list[dict[str, Any]] = []
    for stored in history:
        ev = stored.event
        if isinstance(ev, UserMessage | HumanResponse) and ev.channel == "email" and ev.ref:
            messages.append({"ref": ev.ref})
        elif isinstance(ev, InformationRequested | DoneForNow):
            messages.append({"seq": stored.seq})
    return {
        "requester": first.author if first else None,
        "subject": (first.subject if first else None) or "your request",
        "messages": messages,
    }


def _open_request(history: Sequence[StoredEvent]) -> StoredEvent | None:
    for stored in reversed(history):
        if isinstance(stored.event, ApprovalRequested | InformationRequested | Escalated):
            return stored
    return None
