"""Thread operations shared by every way in: launch, respond, read (factor 6, 11).

Inbound adapters (the HTTP API now, Slack and email later) translate their requests into
these calls. Nothing here calls the model: it appends and marks the thread runnable.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app import core
from app.agent import Agent
from app.contacts import Contacts
from app.errors import (
    IdempotencyMismatch,
    NotAwaiting,
    SeqOutOfRange,
    UnknownAgent,
    VersionConflict,
)
from app.events import Channel, Event, HumanResponse, Retried, StoredEvent, UserMessage
from app.store import DuplicateDelivery, Receipt, Store, ThreadRecord, utcnow
from app.store.store import HUMAN_PRIORITY

APPEND_ATTEMPTS = 8


@dataclass(frozen=True)
class Idempotency:
    """An inbound delivery's key, and a fingerprint of what was asked with it."""

    channel: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, channel: str, scope: str, key: str, request: Any) -> Idempotency:
        blob = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
        return cls(channel, f"{scope}:{key}", hashlib.sha256(blob.encode()).hexdigest()[:32])


class Threads:
    def __init__(
        self,
        store: Store,
        agents: Mapping[str, Agent],
        *,
        default_agent: str,
        base_url: str,
        contacts: Contacts | None = None,
    ) -> None:
        self.store = store
        self.agents = agents
        self.default_agent = default_agent
        self.base_url = base_url
        self.contacts = contacts or Contacts({}, base_url)

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
    ) -> dict[str, Any]:
        """Start a thread. ``check_first=False`` skips the look-up of an earlier delivery
        (the insert finds it anyway) when most deliveries are new: one round trip less."""
        name = agent or self.default_agent
        if name not in self.agents:
            raise UnknownAgent(name, list(self.agents))
        if check_first and idempotency and (seen := await self._seen(idempotency)) is not None:
            return seen
        opening = UserMessage(
            text=message, channel=channel, author=author, ref=ref, subject=subject
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
                receipt=self._receipt(idempotency, answer),
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
            return self._replay(dup, idempotency)
        return answer(record.id, record.events)

    async def respond_approval(
        self,
        thread_id: str,
        *,
        approved: bool,
        comment: str | None = None,
        author: str | None = None,
        channel: Channel = "api",
        idempotency: Idempotency | None = None,
        request_seq: int | None = None,
    ) -> dict[str, Any]:
        """Decide the pending approval; ``request_seq`` names the request a button was for,
        so a click on an old request's button cannot decide a newer one."""

        def build(record: ThreadRecord, state: core.ThreadState) -> Event:
            pending = state.waiting.request_seq if state.waiting else None
            if state.status != "awaiting_approval" or request_seq not in (None, pending):
                raise NotAwaiting(thread_id, state.status, "an approval")
            return HumanResponse(
                kind="approval", approved=approved, comment=comment, author=author, channel=channel
            )

        return await self._respond(thread_id, build, author, idempotency)

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
    ) -> dict[str, Any]:
        """A message in the thread's conversation: an answer if one is awaited, otherwise a
        new message, seen by the next step even if the thread is running right now."""
        return await self._text(
            thread_id, text, author, channel, idempotency, any_time=True, ref=ref
        )

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
    ) -> dict[str, Any]:
        def build(record: ThreadRecord, state: core.ThreadState) -> Event:
            if state.status == "awaiting_response":
                return HumanResponse(
                    kind="response", text=text, author=author, channel=channel, ref=ref
                )
            if any_time or state.status == "done":  # a new message continues a finished turn
                return UserMessage(text=text, author=author, channel=channel, ref=ref)
            raise NotAwaiting(thread_id, state.status, "a free-text response")

        return await self._respond(thread_id, build, author, idempotency)

    async def retry(self, thread_id: str, *, author: str | None = None) -> dict[str, Any]:
        """Run a failed step again: after an error, or an escalation waiting on a person."""

        def build(record: ThreadRecord, state: core.ThreadState) -> Event:
            if not core.failed_step(record.events, state):
                raise NotAwaiting(thread_id, state.status, "a retry: its last step did not fail")
            return Retried(author=author)

        return await self._respond(thread_id, build, author, None)

    async def fork(self, thread_id: str, at_seq: int, *, agent: str | None = None) -> str:
        """A new thread with a copy of this one's events up to ``at_seq``, to try another
        prompt, agent or model from there. It talks over the API, not the original channel
        (a fork must not post into someone's Slack thread or mailbox)."""
        record = await self.store.load(thread_id)
        if not 1 <= at_seq <= record.version:
            raise SeqOutOfRange(thread_id, at_seq, record.version)
        name = agent or record.agent
        if name not in self.agents:
            raise UnknownAgent(name, list(self.agents))
        kept = record.events[:at_seq]
        state = core.project(kept)
        fork = await self.store.create_thread(
            agent=name,
            channel="api",
            new_events=[(e.event, e.actor) for e in kept],
            status=state.status,
        )
        return fork.id

    async def pending_approval(
        self, thread_id: str
    ) -> tuple[str, core.PendingApproval | None, int | None]:
        """The thread's agent, its pending approval if any, and the request's seq."""
        record = await self.store.load(thread_id)
        state = core.project(record.events)
        request_seq = state.waiting.request_seq if state.pending and state.waiting else None
        return record.agent, state.pending, request_seq

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
        build: Callable[[ThreadRecord, core.ThreadState], Event],
        author: str | None,
        idempotency: Idempotency | None,
    ) -> dict[str, Any]:
        if idempotency and (seen := await self._seen(idempotency)) is not None:
            return seen

        def answer(tid: str, stored: list[StoredEvent]) -> dict[str, Any]:
            return {"thread_id": tid, "status": "running", "seq": stored[-1].seq}

        for _ in range(APPEND_ATTEMPTS):
            record = await self.store.load(thread_id)
            state = core.project(record.events)
            try:
                event = build(record, state)
            except NotAwaiting:
                # Perhaps because the first delivery of this very request was just applied.
                if idempotency and (seen := await self._seen(idempotency)) is not None:
                    return seen
                raise
            messages = self.contacts.messages(
                thread_id=thread_id,
                agent=record.agent,
                channel=record.channel,
                channel_key=record.channel_key,
                history=record.events,
                new=[event],
            )
            try:
                stored = await self.store.append(
                    thread_id,
                    record.version,
                    [(event, author)],
                    status="running",
                    run_after=utcnow() - HUMAN_PRIORITY,
                    receipt=self._receipt(idempotency, answer),
                    messages=messages,
                    notify=True,
                )
            except VersionConflict:
                # Someone appended meanwhile: perhaps the first delivery of this very request.
                if idempotency and (seen := await self._seen(idempotency)) is not None:
                    return seen
                continue
            except DuplicateDelivery as dup:
                return self._replay(dup, idempotency)
            return answer(thread_id, stored)
        raise VersionConflict(thread_id, -1)

    # -- idempotency ----------------------------------------------------------------------

    @staticmethod
    def _receipt(
        idem: Idempotency | None, answer: Callable[[str, list[StoredEvent]], dict[str, Any]]
    ) -> Receipt | None:
        if idem is None:
            return None

        def stored_answer(thread_id: str, stored: list[StoredEvent]) -> dict[str, Any]:
            return {"fingerprint": idem.fingerprint, "answer": answer(thread_id, stored)}

        return Receipt(idem.channel, idem.key, stored_answer)

    async def _seen(self, idem: Idempotency) -> dict[str, Any] | None:
        dup = await self.store.get_receipt(idem.channel, idem.key)
        return None if dup is None else self._replay(dup, idem)

    @staticmethod
    def _replay(dup: DuplicateDelivery, idem: Idempotency | None) -> dict[str, Any]:
        stored = dup.response or {}
        if idem is not None and stored.get("fingerprint") != idem.fingerprint:
            raise IdempotencyMismatch(idem.key.partition(":")[2])
        answer: dict[str, Any] = stored.get("answer", {})
        return answer
