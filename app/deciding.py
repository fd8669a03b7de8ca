"""Deciding a pending approval: the part of ``Threads`` every channel's decision goes through.

``respond_approval`` and ``cancel`` check the decider against the agent's policy (with the
groups their channel proves they belong to) and append the decision with its evidence, or
raise and append nothing (``app/decisions.py`` holds the pure check)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from app import core
from app.decisions import decision_event
from app.errors import NotAllowed
from app.events import Event
from app.idempotency import Idempotency
from app.policy import ApprovalPolicy, Policies, Principal, refusal
from app.store import Store, ThreadRecord

log = logging.getLogger(__name__)

# (principal id, the groups a policy names) -> the ones among them the principal belongs to
GroupResolver = Callable[[str, frozenset[str]], Awaitable[frozenset[str]]]
Build = Callable[[ThreadRecord, core.ThreadState], Awaitable[Event]]


class Deciding:
    """Mixed into ``Threads``: its store, policies and group resolvers, and its append."""

    store: Store
    policies: Policies
    groups: dict[str, GroupResolver]

    async def _respond(
        self,
        thread_id: str,
        build: Build,
        author: str | None,
        idempotency: Idempotency | None,
    ) -> dict[str, Any]:
        raise NotImplementedError

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
        return pending, refusal(policy, who, pending.askers, cancel=cancel)
