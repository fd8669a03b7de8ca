"""Thread operations shared by every way in: launch, respond, read (factor 6, 11).

Inbound adapters (the HTTP API now, Slack and email later) translate their requests into
these calls. Nothing here calls the model: it appends and marks the thread runnable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from app import core
from app.agent import Agent
from app.contacts import Contacts, Reply
from app.decisions import decision_event
from app.errors import (
    IdempotencyMismatch,
    NotAllowed,
    NotAwaiting,
    SeqOutOfRange,
    UnknownAgent,
    VersionConflict,
)
from app.events import Channel, Event, HumanResponse, Retried, StoredEvent, UserMessage
from app.policy import ApprovalPolicy, Policies, Principal, refusal
from app.store import DuplicateDelivery, Receipt, Store, ThreadRecord, utcnow
from app.store.store import HUMAN_PRIORITY

log = logging.getLogger(__name__)

APPEND_ATTEMPTS = 8

# (principal id, the groups a policy names) -> the ones among them the principal belongs to
GroupResolver = Callable[[str, frozenset[str]], Awaitable[frozenset[str]]]


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
        if check_first and idempotency and (seen := await self._seen(idempotency)) is not None:
            return seen
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
        principal: Principal,
        comment: str | None = None,
        idempotency: Idempotency | None = None,
        request_seq: int | None = None,
        digest: str | None = None,
        ref: str | None = None,
    ) -> dict[str, Any]:
        """Decide the pending approval, as ``principal`` (whom a channel proved).

        The decision counts only if the agent's policy lets ``principal`` decide this call;
        ``request_seq`` names the request a button, link or reply was for, and ``digest`` the
        arguments the person saw, so an answer to an older request, or to other arguments,
        cannot decide this one. Raises NotAwaiting, NotAllowed."""
        return await self._decide(
            thread_id,
            "approval",
            principal,
            approved=approved,
            comment=comment,
            idempotency=idempotency,
            request_seq=request_seq,
            digest=digest,
            ref=ref,
        )

    async def cancel(
        self,
        thread_id: str,
        *,
        principal: Principal,
        comment: str | None = None,
        idempotency: Idempotency | None = None,
        request_seq: int | None = None,
        ref: str | None = None,
    ) -> dict[str, Any]:
        """Withdraw the pending approval: by the person who asked, or someone who may decide.
        The model hears it was cancelled and goes on."""
        return await self._decide(
            thread_id,
            "cancel",
            principal,
            approved=None,
            comment=comment,
            idempotency=idempotency,
            request_seq=request_seq,
            digest=None,
            ref=ref,
        )

    async def _decide(
        self,
        thread_id: str,
        kind: Literal["approval", "cancel"],
        principal: Principal,
        *,
        approved: bool | None,
        comment: str | None,
        idempotency: Idempotency | None,
        request_seq: int | None,
        digest: str | None,
        ref: str | None,
    ) -> dict[str, Any]:
        checked: dict[str, Principal] = {}

        async def build(record: ThreadRecord, state: core.ThreadState) -> Event:
            pending = state.pending
            policy = self.policies.for_call(record.agent, pending.intent if pending else "")
            who = checked.get(record.agent + (pending.intent if pending else ""))
            if who is None:
                who = await self._with_groups(principal, policy)
                checked[record.agent + (pending.intent if pending else "")] = who
            try:
                return decision_event(
                    thread_id,
                    state,
                    kind,
                    who,
                    policy,
                    approved=approved,
                    comment=comment,
                    request_seq=request_seq,
                    digest=digest,
                    ref=ref,
                )
            except NotAllowed as exc:
                log.warning("thread %s: %s by %s refused: %s", thread_id, kind, who.key, exc)
                raise

        return await self._respond(thread_id, build, principal.id, idempotency)

    async def _with_groups(self, principal: Principal, policy: ApprovalPolicy) -> Principal:
        """The principal with the policy's groups it belongs to, as its channel tells."""
        resolver = self.groups.get(principal.channel)
        named = policy.ids(principal.channel)
        if resolver is None or not named or principal.key in policy.approvers:
            return principal
        return principal.in_groups(await resolver(principal.id, named))

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

    async def pending_approval(
        self, thread_id: str
    ) -> tuple[str, core.PendingApproval | None, int | None]:
        """The thread's agent, its pending approval if any, and the request's seq."""
        record = await self.store.load(thread_id)
        state = core.project(record.events)
        request_seq = state.pending.request_seq if state.pending else None
        return record.agent, state.pending, request_seq

    def policy(self, agent: str, intent: str) -> ApprovalPolicy:
        return self.policies.for_call(agent, intent)

    async def may_decide(
        self, thread_id: str, principal: Principal, *, cancel: bool = False
    ) -> tuple[core.PendingApproval | None, str | None]:
        """The pending approval, and why ``principal`` may not decide it (None: they may).
        For a channel that wants to answer a person before it asks for a reason, say; the
        decision itself is checked again when it is appended."""
        agent, pending, _ = await self.pending_approval(thread_id)
        if pending is None:
            return None, None
        policy = self.policies.for_call(agent, pending.intent)
        who = await self._with_groups(principal, policy)
        return pending, refusal(policy, who, pending.requested_by, cancel=cancel)

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
        if idempotency and (seen := await self._seen(idempotency)) is not None:
            return seen

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
                if idempotency and (seen := await self._seen(idempotency)) is not None:
                    return seen
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
