"""The pure core: what a thread's events mean, and what should happen next (factors 5, 8, 12).

Nothing here does I/O or reads the clock. ``project`` folds stored events into a
:class:`ThreadState`; ``next_move`` decides the engine's next move from that state, the
agent's definition and the time it is given; ``wake_at`` says when a thread needs the engine
again (now, at its next durable timer, or not until someone writes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from app.agent import Agent, TimerKind, TimerPolicy
from app.events import (
    ActionChosen,
    ApprovalRequested,
    DoneForNow,
    ErrorEvent,
    Escalated,
    Event,
    HumanResponse,
    InformationRequested,
    Retried,
    StoredEvent,
    TimerFired,
    ToolResult,
    ToolStarted,
    UserMessage,
    arguments_digest,
)
from app.forks import fork_prefix

__all__ = ["fork_prefix"]  # with everything below: the core's whole face

Status = Literal["running", "awaiting_approval", "awaiting_response", "done"]
STATUSES: tuple[Status, ...] = ("running", "awaiting_approval", "awaiting_response", "done")
MAX_CONSECUTIVE_ERRORS = 3


@dataclass(frozen=True)
class PendingApproval:
    action_seq: int
    intent: str
    arguments: dict[str, Any]
    request_seq: int = 0
    requested_by: str | None = None
    requesters: frozenset[str] = frozenset()

    @property
    def digest(self) -> str:
        return arguments_digest(self.intent, self.arguments)

    @property
    def askers(self) -> frozenset[str]:
        """Who asked for it, for four-eyes and cancels (older events name one person)."""
        return self.requesters or frozenset(filter(None, [self.requested_by]))


@dataclass(frozen=True)
class Waiting:
    """A question to a person that is open: what kind, since when, which timers fired."""

    kind: TimerKind
    request_seq: int
    since: datetime
    fired: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ThreadState:
    status: Status = "running"
    version: int = 0
    last: Event | None = None
    pending: PendingApproval | None = None
    waiting: Waiting | None = None
    consecutive_errors: int = 0
    recent_errors: tuple[str, ...] = ()
    model_calls_since_human: int = 0
    # Set while a tool's start is recorded but its result is not: (action_seq, action).
    tool_in_flight: tuple[int, dict[str, Any]] | None = None
    # An allowed approval, from the decision until its tool starts (or ends): whatever
    # arrives in between (a message, a timer), the approved call runs next, once.
    approved: PendingApproval | None = None
    # Who wrote last (``channel:id``), and everyone who wrote since the agent last finished a
    # task: the requesters of what the model asks next.
    last_author: str | None = None
    task_authors: frozenset[str] = frozenset()


def apply(state: ThreadState, stored: StoredEvent) -> ThreadState:
    """One step of the fold. Total over the event union: mypy checks the match.

    A pending approval ends only by a decision on it (``request_seq`` and digest match), a
    cancel, or its time-out: a message written meanwhile is kept and changes nothing."""
    event = stored.event
    s = replace(state, version=stored.seq, last=event)
    match event:
        case UserMessage():
            s = _wrote(s, _principal_key(event.channel, event.author))
            if s.status == "awaiting_approval":
                return s  # read by the model after the decision; it decides nothing
            # A tool in flight stays so: only its outcome or a person's decision settles it.
            return _fresh_turn(s)
        case ActionChosen():
            return replace(s, model_calls_since_human=s.model_calls_since_human + 1)
        case ToolStarted():
            return replace(
                s,
                tool_in_flight=(event.action_seq, event.action),
                approved=_settled(s.approved, event.action_seq),
            )
        case ToolResult():
            return replace(
                s,
                consecutive_errors=0,
                recent_errors=(),
                tool_in_flight=None,
                approved=_settled(s.approved, event.action_seq),
            )
        case ErrorEvent():
            return replace(
                s,
                consecutive_errors=s.consecutive_errors + 1,
                recent_errors=(*s.recent_errors[-(MAX_CONSECUTIVE_ERRORS - 1) :], event.message),
                tool_in_flight=None,
                approved=_settled(s.approved, event.action_seq),
            )
        case ApprovalRequested():
            pending = PendingApproval(
                event.action_seq,
                event.intent,
                dict(event.arguments),
                stored.seq,
                event.requested_by,
                frozenset(event.requesters or ()),
            )
            waiting = Waiting("approval", stored.seq, stored.created_at)
            return replace(s, status="awaiting_approval", pending=pending, waiting=waiting)
        case HumanResponse() if event.kind in ("approval", "cancel"):
            decided = s.pending
            if decided is None or not _decides(event, decided):
                return s  # decides nothing (the service never appends such a decision)
            approved = decided if event.kind == "approval" and event.approved else None
            return replace(_fresh_turn(s), approved=approved)
        case HumanResponse():
            s = _wrote(s, _principal_key(event.channel, event.author))
            if s.status == "awaiting_approval":
                return s  # free text never decides a pending approval
            return _fresh_turn(s)
        case InformationRequested():
            waiting = Waiting("response", stored.seq, stored.created_at)
            return replace(s, status="awaiting_response", waiting=waiting)
        case Escalated():
            # A person now decides what happens, including about an interrupted tool.
            waiting = Waiting("response", stored.seq, stored.created_at)
            return replace(
                s, status="awaiting_response", waiting=waiting, tool_in_flight=None, approved=None
            )
        case TimerFired():
            if s.waiting is None:
                return s
            return replace(s, waiting=replace(s.waiting, fired=s.waiting.fired | {event.kind}))
        case Retried():
            # An operator takes the place of the person asked: the step runs again afresh.
            if s.status == "awaiting_approval":
                return s
            return _fresh_turn(s)
        case DoneForNow():
            return replace(s, status="done", waiting=None, task_authors=frozenset())


def _decides(event: HumanResponse, pending: PendingApproval) -> bool:
    """A decision counts for the pending request only if it names it (or names none, as
    old events do) and, when it carries a digest, for exactly its arguments."""
    if event.request_seq is not None and event.request_seq != pending.request_seq:
        return False
    digest = (event.evidence or {}).get("digest")
    return digest is None or digest == pending.digest


def _settled(approved: PendingApproval | None, action_seq: int | None) -> PendingApproval | None:
    return None if approved is not None and approved.action_seq == action_seq else approved


def _wrote(s: ThreadState, author: str | None) -> ThreadState:
    if author is None:
        return s
    return replace(s, last_author=author, task_authors=s.task_authors | {author})


def _principal_key(channel: str, author: str | None) -> str | None:
    return None if author is None else f"{channel}:{author}"


def _fresh_turn(s: ThreadState) -> ThreadState:
    """A person spoke: the thread runs, nothing is pending, the error and step counts restart."""
    return replace(
        s,
        status="running",
        pending=None,
        waiting=None,
        consecutive_errors=0,
        recent_errors=(),
        model_calls_since_human=0,
    )


def project(events: Iterable[StoredEvent], state: ThreadState | None = None) -> ThreadState:
    state = state or ThreadState()
    for stored in events:
        state = apply(state, stored)
    return state


# -- moves --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Idle:
    """Nothing to do until a person writes, or until a timer is due."""


@dataclass(frozen=True)
class CallModel:
    pass


@dataclass(frozen=True)
class RunTool:
    action_seq: int
    action: dict[str, Any]
    record_start: bool  # True for non-idempotent tools: a crash must not re-run them unseen


@dataclass(frozen=True)
class Escalate:
    reason: str


@dataclass(frozen=True)
class FireTimer:
    kind: Literal["reminder", "escalation"]
    request_seq: int


@dataclass(frozen=True)
class TimeOut:
    """Nobody answered in time: answer for them, so the agent can go on."""

    response: HumanResponse


Move = Idle | CallModel | RunTool | Escalate | FireTimer | TimeOut


def next_move(state: ThreadState, agent: Agent, step_cap: int, now: datetime) -> Move:
    if state.waiting is not None and state.status != "running":
        return _timer_move(state.waiting, agent.timers.get(state.waiting.kind), now)
    if state.status != "running" or state.last is None:
        return Idle()
    if state.approved is not None:
        # Exactly the call that was approved: its arguments as the request recorded them. Its
        # start is recorded first, so a crash cannot run it again unseen.
        approved = state.approved
        action = {"intent": approved.intent, **approved.arguments}
        return RunTool(approved.action_seq, action, True)
    if state.tool_in_flight is not None:
        # Its start was recorded and no result followed: the process died while it ran.
        seq, action = state.tool_in_flight
        tool = agent.tools_by_intent.get(str(action.get("intent")))
        if tool is not None and tool.idempotent:
            return RunTool(seq, action, False)
        return Escalate(
            f"`{action.get('intent')}` was interrupted and may or may not have run; "
            "it is not safe to repeat it automatically. Check, then tell me how to go on."
        )
    if isinstance(state.last, ActionChosen):
        # The model's choice was recorded but not acted on yet.
        return _act_on(state.version, state.last, agent)
    if state.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
        distinct = list(dict.fromkeys(state.recent_errors))
        said = "; ".join(distinct) if len(distinct) > 1 else f"{distinct[0]} (each time)"
        return Escalate(f"I stopped after {state.consecutive_errors} failures in a row: {said}")
    if state.model_calls_since_human >= step_cap:
        return Escalate(f"I reached the limit of {step_cap} steps without hearing from a person.")
    return CallModel()


def _timer_move(waiting: Waiting, policy: TimerPolicy | None, now: datetime) -> Move:
    due = _due_timer(waiting, policy)
    if due is None or due[1] > now:
        return Idle()
    what, _ = due
    if what == "timeout":
        assert policy is not None and policy.timeout_after is not None
        reason = f"no answer within {human_duration(policy.timeout_after)}"
        if waiting.kind == "approval":
            response = HumanResponse(
                kind="approval",
                approved=False,
                comment=reason,
                channel="timer",
                author="timer",
                request_seq=waiting.request_seq,
                evidence={"principal": "timer", "via": "durable timer"},
            )
        else:
            response = HumanResponse(
                kind="response", text=f"({reason})", channel="timer", author="timer"
            )
        return TimeOut(response)
    return FireTimer(what, waiting.request_seq)


def _due_timer(
    waiting: Waiting, policy: TimerPolicy | None
) -> tuple[Literal["reminder", "escalation", "timeout"], datetime] | None:
    """The next timer of this wait that has not fired, and when it is due."""
    if policy is None:
        return None
    steps: list[tuple[Literal["reminder", "escalation", "timeout"], timedelta | None]] = [
        ("reminder", policy.remind_after),
        ("escalation", policy.escalate_after),
        ("timeout", policy.timeout_after),
    ]
    for name, after in steps:
        if after is not None and name not in waiting.fired:
            return name, waiting.since + after
    return None


def failed_step(events: Sequence[StoredEvent], state: ThreadState) -> bool:
    """Whether the thread's last step failed: an error it may still retry on its own, or
    an escalation (errors in a row, the step cap, an interrupted tool) awaiting a person."""
    if state.consecutive_errors > 0:
        return True
    waiting = state.waiting
    if state.status != "awaiting_response" or waiting is None:
        return False
    return isinstance(events[waiting.request_seq - 1].event, Escalated)


def wake_at(state: ThreadState, agent: Agent, now: datetime) -> datetime | None:
    """When the engine should look at this thread again; None: when someone writes."""
    if state.status == "running":
        return now
    if state.waiting is None:
        return None
    due = _due_timer(state.waiting, agent.timers.get(state.waiting.kind))
    return None if due is None else due[1]


def _act_on(seq: int, chosen: ActionChosen, agent: Agent) -> Move:
    tool = agent.tools_by_intent.get(chosen.intent)
    if tool is None or tool.gated:
        # Human actions and approvals are appended with their action; a gated call found
        # alone is asked of the model again, never run without its request.
        return CallModel()
    return RunTool(seq, chosen.action, not tool.idempotent)


def consequences(
    action_seq: int,
    action: dict[str, Any],
    agent: Agent,
    requested_by: str | None = None,
    *,
    gated: bool | None = None,
    requesters: frozenset[str] = frozenset(),
) -> list[Event]:
    """Events that follow the model's choice at once, in the same append as the choice.
    ``requested_by``/``requesters``: who wrote last, and everyone who wrote in this task
    (``ThreadState.last_author``, ``task_authors``), for four-eyes; ``gated``: the tool's
    whole gate, where the caller checked it (it may need I/O)."""
    intent = str(action["intent"])
    args = {k: v for k, v in action.items() if k != "intent"}
    if intent == "request_more_information":
        return [InformationRequested(question=str(args.get("message", "")))]
    if intent == "done_for_now":
        return [DoneForNow(message=str(args.get("message", "")))]
    tool = agent.tools_by_intent[intent]
    if gated if gated is not None else tool.approval_needed(action):
        return [
            ApprovalRequested(
                intent=intent,
                arguments=args,
                action_seq=action_seq,
                requested_by=requested_by,
                digest=arguments_digest(intent, args),
                requesters=sorted(requesters | ({requested_by} if requested_by else set())),
            )
        ]
    return []


def human_duration(delta: timedelta) -> str:
    if delta < timedelta(seconds=1):
        return f"{round(delta.total_seconds() * 1000)} ms"
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
