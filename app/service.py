"""Thread operations shared by every way in: launch, respond, read (factor 6, 11).

Inbound adapters (the HTTP API now, Slack and email later) translate their requests into
these calls. Nothing here calls the model: it appends and marks the thread runnable.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from app import core
from app.agent import Agent
from app.contacts import Contacts, Reply
from app.deciding import Deciding, GroupResolver
from app.errors import (
    NotAwaiting,
    SeqOutOfRange,
    UnknownAgent,
    VersionConflict,
)
from app.events import Channel, Event, HumanResponse, Retried, StoredEvent, UserMessage
from app.idempotency import Idempotency, receipt_for, replay, seen

__all__ = ["GroupResolver", "Idempotency", "Threads"]
from app.policy import Policies
from app.store import DuplicateDelivery, Store, ThreadRecord, utcnow
from app.store.store import HUMAN_PRIORITY

log = logging.getLogger(__name__)

APPEND_ATTEMPTS = 8


class Threads(Deciding):
    def __init__(
        self,
        store: Store,
        agents: Mapping[str, Agent],
        *,
        default_agent: str,
        base_url: str,
        contacts: Contacts | None = None,
        policies: Policies | None = None,
        groups: Mapping[str, GroupResolver] | None = None,
    ) -> None:
        self.store = store
        self.agents = agents
        self.default_agent = default_agent
        self.base_url = base_url
        self.contacts = contacts or Contacts({}, base_url)
        self.policies = policies or Policies()
        # channel -> which of the named groups a principal belongs to (Slack user groups)
        self.groups: dict[str, GroupResolver] = dict(groups or {})

    def response_url(self, thread_id: str) -> str:
        return f"{self.base_url}/thread/{thread_id}/response"

    async def launch(
        self,
        message: str,
        *,
        agent: str | None = None,
        channel: Channel = "api",
        author: str | None = None,
        channel_key: str | None = None,
        idempotency: Idempotency | None = None,
        ref: str | None = None,
        subject: str | None = None,
        check_first: bool = True,
        verified: bool | None = None,
    ) -> dict[str, Any]:
        """Start a thread. ``check_first=False`` skips the look-up of an earlier delivery
        (the insert finds it anyway) when most deliveries are new: one round trip less."""
        name = agent or self.default_agent
        if name not in self.agents:
            raise UnknownAgent(name, list(self.agents))
        if (
            check_first
            and idempotency
            and (known := await seen(self.store, idempotency)) is not None
        ):
            return known
        opening = UserMessage(
            text=message,
            channel=channel,
            author=author,
            ref=ref,
            subject=subject,
            verified=verified,
        )
        thread_id = str(uuid.uuid4())

        def answer(thread_id: str, stored: list[StoredEvent]) -> dict[str, Any]:
            return {
                "thread_id": thread_id,
                "status": "running",
                "events": [e.as_json() for e in stored],
                "response_url": self.response_url(thread_id),
            }

        try:
            record = await self.store.create_thread(
                agent=name,
                channel=channel,
                channel_key=channel_key,
                new_events=[(opening, author)],
                status="running",
                receipt=receipt_for(idempotency, answer),
                thread_id=thread_id,
                messages=self.contacts.messages(
                    thread_id=thread_id,
                    agent=name,
                    channel=channel,
                    channel_key=channel_key,
                    history=[],
                    new=[opening],
                ),
            )
        except DuplicateDelivery as dup:
            return replay(dup, idempotency)
        return answer(record.id, record.events)

    async def respond_text(
        self,
        thread_id: str,
        text: str,
        *,
        author: str | None = None,
        channel: Channel = "api",
        idempotency: Idempotency | None = None,
    ) -> dict[str, Any]:
        return await self._text(thread_id, text, author, channel, idempotency, any_time=False)

    async def post_message(
        self,
        thread_id: str,
        text: str,
        *,
        author: str | None = None,
        channel: Channel = "api",
        idempotency: Idempotency | None = None,
        ref: str | None = None,
        verified: bool | None = None,
        reply: Reply | None = None,
    ) -> dict[str, Any]:
        """A message in the thread's conversation: an answer if one is awaited, otherwise a
        new message, seen by the next step even if the thread is running right now. While an
        approval is pending it is stored and shown to the model after the decision.
        ``reply``: a short answer to its author, sent with it (how to decide, say)."""
        return await self._text(
            thread_id, text, author, channel, idempotency, any_time=True, ref=ref,
            verified=verified, reply=reply,
        )  # fmt: skip

    async def _text(
        self,
        thread_id: str,
        text: str,
        author: str | None,
        channel: Channel,
        idempotency: Idempotency | None,
        *,
        any_time: bool,
        ref: str | None = None,
        verified: bool | None = None,
        reply: Reply | None = None,
    ) -> dict[str, Any]:
        async def build(record: ThreadRecord, state: core.ThreadState) -> Event:
            if state.status == "awaiting_response":
                return HumanResponse(
                    kind="response", text=text, author=author, channel=channel, ref=ref
                )
            # A new message continues a finished turn; while an approval is pending it is
            # kept for the model and decides nothing.
            if any_time or state.status == "done":
                return UserMessage(
                    text=text, author=author, channel=channel, ref=ref, verified=verified
                )
            raise NotAwaiting(thread_id, state.status, "a free-text response")

        return await self._respond(thread_id, build, author, idempotency, reply=reply)

    async def retry(self, thread_id: str, *, author: str | None = None) -> dict[str, Any]:
        """Run a failed step again: after an error, or an escalation waiting on a person."""

        async def build(record: ThreadRecord, state: core.ThreadState) -> Event:
            if not core.failed_step(record.events, state):
                raise NotAwaiting(thread_id, state.status, "a retry: its last step did not fail")
            return Retried(author=author)

        return await self._respond(thread_id, build, author, None)

    async def fork(self, thread_id: str, at_seq: int, *, agent: str | None = None) -> str:
        """A new thread with a copy of this one's events up to ``at_seq``, to try another
        prompt, agent or model from there. It talks over the API, not the original channel
        (a fork must not post into someone's Slack thread or mailbox), and it never replays a
        side effect: a call chosen but not finished there (asked, approved, started) is left
        out with everything after it, so the fork's next step is the model's and a gated
        call in it needs an approval of its own."""
        record = await self.store.load(thread_id)
        if not 1 <= at_seq <= record.version:
            raise SeqOutOfRange(thread_id, at_seq, record.version)
        name = agent or record.agent
        if name not in self.agents:
            raise UnknownAgent(name, list(self.agents))
        kept = core.fork_prefix(record.events[:at_seq])
        if not kept:
            raise SeqOutOfRange(thread_id, at_seq, record.version)
        state = core.project(kept)
        fork = await self.store.create_thread(
            agent=name,
            channel="api",
            new_events=[(e.event, e.actor) for e in kept],
            status=state.status,
        )
        return fork.id

    async def get(self, thread_id: str) -> dict[str, Any]:
        record = await self.store.load(thread_id)
        return {
            "thread_id": record.id,
            "agent": record.agent,
            "status": record.status,
            "created_at": record.created_at.isoformat(),
            "updated_at": record.updated_at.isoformat(),
            "response_url": self.response_url(record.id),
            "events": [e.as_json() for e in record.events],
        }

    async def _respond(
        self,
        thread_id: str,
        build: Callable[[ThreadRecord, core.ThreadState], Awaitable[Event]],
        author: str | None,
        idempotency: Idempotency | None,
        *,
        reply: Reply | None = None,
    ) -> dict[str, Any]:
        if idempotency and (known := await seen(self.store, idempotency)) is not None:
            return known

        def answer(tid: str, stored: list[StoredEvent]) -> dict[str, Any]:
            return {"thread_id": tid, "status": after.status, "seq": stored[-1].seq}

        after = core.ThreadState()
        for _ in range(APPEND_ATTEMPTS):
            record = await self.store.load(thread_id)
            state = core.project(record.events)
            try:
                event = await build(record, state)
            except NotAwaiting:
                # Perhaps because the first delivery of this very request was just applied.
                if idempotency and (known := await seen(self.store, idempotency)) is not None:
                    return known
                raise
            now = utcnow()
            after = core.apply(state, StoredEvent(record.version + 1, event, author, now))
            if after.status == "running":
                run_after: datetime | None = now - HUMAN_PRIORITY  # a person waits: first
            else:  # still waiting (a message while an approval is pending): its timers stand
                agent = self.agents.get(record.agent)
                run_after = core.wake_at(after, agent, now) if agent else None
            messages = self.contacts.messages(
                thread_id=thread_id,
                agent=record.agent,
                channel=record.channel,
                channel_key=record.channel_key,
                history=record.events,
                new=[event],
            )
            if reply is not None:
                messages.append(
                    self.contacts.notice(
                        thread_id=thread_id,
                        agent=record.agent,
                        channel=getattr(event, "channel", "api"),
                        seq=record.version + 1,
                        reply=reply,
                    )
                )
            try:
                stored = await self.store.append(
                    thread_id,
                    record.version,
                    [(event, author)],
                    status=after.status,
                    run_after=run_after,
                    receipt=receipt_for(idempotency, answer),
                    messages=messages,
                    notify=True,
                )
            except VersionConflict:
                # Someone appended meanwhile: perhaps the first delivery of this very request.
                if idempotency and (known := await seen(self.store, idempotency)) is not None:
                    return known
                continue
            except DuplicateDelivery as dup:
                return replay(dup, idempotency)
            return answer(thread_id, stored)
        raise VersionConflict(thread_id, -1)
