"""The decision, as a pure function: what a person's answer to a pending approval becomes.

The one place every channel's decision passes (``Threads`` calls it for Slack, email, links,
the API and anything added later): the request must be the one pending, the arguments the
ones the person saw, and the person one the policy lets decide. The result is the
``HumanResponse`` to append, with its evidence; anything else raises and appends nothing.
"""

from __future__ import annotations

from typing import Literal

from app.core import ThreadState
from app.errors import NotAllowed, NotAwaiting
from app.events import Channel, HumanResponse
from app.policy import ApprovalPolicy, Principal, refusal

CHANNELS: tuple[Channel, ...] = ("api", "slack", "email", "timer", "system", "link", "operator")


def decision_event(
    thread_id: str,
    state: ThreadState,
    kind: Literal["approval", "cancel"],
    principal: Principal,
    policy: ApprovalPolicy,
    *,
    approved: bool | None = None,
    comment: str | None = None,
    request_seq: int | None = None,
    digest: str | None = None,
    ref: str | None = None,
) -> HumanResponse:
    """The event that records ``principal``'s decision (``kind``: an approval, yes or no, or
    a cancel) on the pending approval. Raises NotAwaiting when nothing, or another request,
    or other arguments, are pending; NotAllowed when the policy does not let them decide."""
    pending = state.pending
    if state.status != "awaiting_approval" or pending is None:
        raise NotAwaiting(thread_id, state.status, "a decision")
    if request_seq is not None and request_seq != pending.request_seq:
        raise NotAwaiting(thread_id, "deciding another request", "this decision")
    if digest is not None and digest != pending.digest:
        raise NotAwaiting(thread_id, "asking about other arguments", "this decision")
    why = refusal(policy, principal, pending.askers, cancel=kind == "cancel")
    if why is not None:
        raise NotAllowed(thread_id, principal.key, why)
    channel = principal.channel if principal.channel in CHANNELS else "system"
    return HumanResponse(
        kind=kind,
        approved=approved if kind == "approval" else None,
        comment=comment,
        author=principal.id,
        channel=channel,
        ref=ref,
        request_seq=pending.request_seq,
        evidence=principal.evidence(pending.digest),
    )
