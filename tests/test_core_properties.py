"""The approval promise as a property of the core: random interleavings of messages, decisions
by allowed and disallowed people (stale, for other arguments, the requester's own under
four-eyes), cancels, timers, crashes mid-call and forks, driven through the same pure
functions the service and the engine use (``decision_event``, ``project``, ``next_move``,
``consequences``, ``fork_prefix``). After every step:

- a gated call ran only after an allowed approval, in its own thread, of exactly its
  arguments; at most once per approval (a keyed, idempotent one again only after a crash);
- a pending request ends only by an allowed decision, a cancel or its time-out;
- the projected status agrees with what is pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import HealthCheck, settings
from hypothesis import event as event_
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from app import core
from app.agent import Action, Agent, TimerPolicy, Tool, ToolContext
from app.decisions import decision_event
from app.errors import NotAllowed, NotAwaiting
from app.events import (
    ActionChosen,
    ApprovalRequested,
    ErrorEvent,
    Escalated,
    Event,
    HumanResponse,
    StoredEvent,
    TimerFired,
    ToolResult,
    ToolStarted,
    UserMessage,
)
from app.policy import ApprovalPolicy, Principal


class Deploy(Action):
    intent: Literal["deploy"] = "deploy"
    tag: str


class Sync(Action):
    intent: Literal["sync"] = "sync"
    target: str


class Look(Action):
    intent: Literal["look"] = "look"


async def _unused(call: Any, ctx: ToolContext) -> str:
    return "never called: the machine below records runs itself"


AGENT = Agent(
    name="bot",
    prompt="prompts/base.j2",
    tools=(
        Tool(Look, _unused),
        Tool(Deploy, _unused, needs_approval=True, idempotent=False),
        Tool(Sync, _unused, needs_approval=True, idempotent=True),
    ),
    timers={
        "approval": TimerPolicy(
            remind_after=timedelta(minutes=10), timeout_after=timedelta(hours=1)
        )
    },
)
POLICY = ApprovalPolicy(
    frozenset({"slack:UALICE", "slack:UBOB", "email:ops@x.test"}), four_eyes=True
)
PEOPLE = {
    "alice": Principal("slack", "UALICE", "slack signature"),  # listed, and the requester
    "bob": Principal("slack", "UBOB", "slack signature"),
    "ops": Principal("email", "ops@x.test", "reply token"),
    "mallory": Principal("slack", "UMALLORY", "slack signature"),
    "eve": Principal("email", "eve@x.test", "reply token"),
}
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@dataclass
class Thread:
    events: list[StoredEvent] = field(default_factory=list)
    copied: int = 0  # events copied from the thread it was forked from
    runs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (action seq, action)
    crashes: dict[int, int] = field(default_factory=dict)  # action seq -> crashes mid-call

    @property
    def state(self) -> core.ThreadState:
        return core.project(self.events)


class ApprovalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.threads = [Thread()]
        self._append(0, UserMessage(text="deploy please", channel="slack", author="UALICE"))
        self.before: list[core.PendingApproval | None] = [None]

    # -- helpers ----------------------------------------------------------------------------

    def _append(self, t: int, *events: Event) -> None:
        thread = self.threads[t]
        for event in events:
            thread.events.append(StoredEvent(len(thread.events) + 1, event, None, self.now))

    def _remember(self) -> None:
        self.before = [thread.state.pending for thread in self.threads]

    # -- people -----------------------------------------------------------------------------

    @rule(
        t=st.integers(0, 3),
        who=st.sampled_from(sorted(PEOPLE)),
        text=st.sampled_from(["never mind", "approve", "yes", "cancel", "ok, go ahead", "stop!"]),
    )
    def message(self, t: int, who: str, text: str) -> None:
        t %= len(self.threads)
        self._remember()
        person = PEOPLE[who]
        state = self.threads[t].state
        if state.status == "awaiting_response":
            event: Event = HumanResponse(
                kind="response",
                text=text,
                author=person.id,
                channel=person.channel,  # type: ignore[arg-type]
            )
        else:
            event = UserMessage(text=text, author=person.id, channel=person.channel)  # type: ignore[arg-type]
        self._append(t, event)

    @rule(
        t=st.integers(0, 3),
        # Mostly people who may decide, mostly answering what is pending: the interesting
        # interleavings need decisions that count.
        who=st.sampled_from(["bob", "bob", "ops", "ops", "alice", "mallory", "eve"]),
        verdict=st.sampled_from(["approve", "approve", "approve", "reject", "cancel"]),
        stale=st.sampled_from([False, False, False, False, True]),
        other_arguments=st.sampled_from([False, False, False, False, True]),
    )
    def decide(self, t: int, who: str, verdict: str, stale: bool, other_arguments: bool) -> None:
        t %= len(self.threads)
        self._remember()
        state = self.threads[t].state
        pending = state.pending
        request_seq = (pending.request_seq if pending else 1) - (1 if stale else 0)
        digest = "0" * 32 if other_arguments else None
        try:
            event = decision_event(
                "t",
                state,
                "cancel" if verdict == "cancel" else "approval",
                PEOPLE[who],
                POLICY,
                approved=verdict == "approve",
                request_seq=request_seq,
                digest=digest,
            )
        except NotAwaiting:
            event_("decision: nothing of that pending")
            return
        except NotAllowed:
            event_("decision: not allowed")
            return
        event_(f"decision: {verdict} counted")
        self._append(t, event)

    # -- the engine -------------------------------------------------------------------------

    @rule(t=st.integers(0, 3), choice=st.integers(0, 5), tag=st.sampled_from(["v1", "v2"]))
    def step(self, t: int, choice: int, tag: str) -> None:
        t %= len(self.threads)
        self._remember()
        thread = self.threads[t]
        move = core.next_move(thread.state, AGENT, 20, self.now)
        match move:
            case core.CallModel():
                actions: list[dict[str, Any]] = [
                    {"intent": "look"},
                    {"intent": "deploy", "tag": tag},
                    {"intent": "sync", "target": tag},
                    {"intent": "done_for_now", "message": "done"},
                    {"intent": "request_more_information", "message": "which?"},
                    {"intent": "deploy", "tag": tag},
                ]
                action = actions[choice]
                seq = len(thread.events) + 1
                chosen = ActionChosen(action=action)
                if action["intent"] == "look":
                    result = ToolResult(intent="look", result="[]", action_seq=seq)
                    self._append(t, chosen, result)
                else:
                    state = thread.state
                    asks = core.consequences(
                        seq, action, AGENT, state.last_author, requesters=state.task_authors
                    )
                    self._append(t, chosen, *asks)
            case core.RunTool():
                self._run(t, move, crash=False)
            case core.Escalate():
                self._append(t, Escalated(reason=move.reason))
            case core.FireTimer():
                self._append(t, TimerFired(kind=move.kind, request_seq=move.request_seq))
            case core.TimeOut():
                self._append(t, move.response)
            case core.Idle():
                pass

    @rule(t=st.integers(0, 3))
    def crash_mid_call(self, t: int) -> None:
        """The worker dies while a call runs: its start may be recorded, its result never."""
        t %= len(self.threads)
        self._remember()
        move = core.next_move(self.threads[t].state, AGENT, 20, self.now)
        if isinstance(move, core.RunTool):
            self._run(t, move, crash=True)

    def _run(self, t: int, move: core.RunTool, *, crash: bool) -> None:
        thread = self.threads[t]
        if move.record_start:
            intent = str(move.action["intent"])
            self._append(
                t, ToolStarted(intent=intent, action=move.action, action_seq=move.action_seq)
            )
        thread.runs.append((move.action_seq, dict(move.action)))
        event_(f"ran {move.action['intent']}{' and crashed' if crash else ''}")
        if crash:
            thread.crashes[move.action_seq] = thread.crashes.get(move.action_seq, 0) + 1
            return
        intent = str(move.action["intent"])
        if move.action_seq % 3 == 0:  # some calls fail: a compact error, never a re-run
            self._append(t, ErrorEvent(kind="tool", message="failed", action_seq=move.action_seq))
        else:
            self._append(t, ToolResult(intent=intent, result="ok", action_seq=move.action_seq))

    @rule(minutes=st.sampled_from([1, 11, 61, 180]))
    def time_passes(self, minutes: int) -> None:
        self._remember()
        self.now += timedelta(minutes=minutes)

    @precondition(lambda self: len(self.threads) < 4)
    @rule(t=st.integers(0, 3), at=st.integers(0, 60))
    def fork(self, t: int, at: int) -> None:
        """A fork at some event (0: at the last one, whatever is in flight there)."""
        t %= len(self.threads)
        self._remember()
        source = self.threads[t].events
        kept = core.fork_prefix(source[: min(at, len(source))] if at else source)
        if kept:
            event_("forked")
            self.threads.append(Thread(events=list(kept), copied=len(kept)))
            self.before.append(None)

    # -- what must always hold --------------------------------------------------------------

    @invariant()
    def gated_calls_ran_only_once_after_an_allowed_approval_of_exactly_them(self) -> None:
        for thread in self.threads:
            runs_per_call: dict[int, int] = {}
            for action_seq, action in thread.runs:
                runs_per_call[action_seq] = runs_per_call.get(action_seq, 0) + 1
                tool = AGENT.tools_by_intent[str(action["intent"])]
                if not tool.gated:
                    continue
                request = _request_for(thread.events, action_seq)
                assert request is not None, f"{action} ran without a request"
                asked_seq, asked = request
                assert {"intent": asked.intent, **asked.arguments} == action
                decision = _approval_of(thread.events, asked_seq)
                assert decision is not None, f"{action} ran without an approval"
                decision_seq, event = decision
                assert decision_seq > thread.copied, "a copied approval ran again in a fork"
                who = Principal(event.channel, str(event.author), "")
                assert POLICY.allows(who), f"{who.key} approved {action}"
                askers = set(asked.requesters or ()) | {asked.requested_by}
                assert who.key not in askers, "someone who asked approved their own call"
                assert (event.evidence or {}).get("digest") == asked.digest
            for action_seq, count in runs_per_call.items():
                action = dict(next(a for s, a in thread.runs if s == action_seq))
                tool = AGENT.tools_by_intent[str(action["intent"])]
                again = thread.crashes.get(action_seq, 0) if tool.idempotent else 0
                assert count <= 1 + again, f"{action} ran {count} times"

    @invariant()
    def an_approval_is_kept_until_its_call_starts(self) -> None:
        """Whatever arrives after an approval (messages, timers), the approved call is the
        next thing that runs: the approval is never dropped."""
        for thread in self.threads:
            state = thread.state
            for stored in thread.events[thread.copied :]:
                event = stored.event
                if not (isinstance(event, HumanResponse) and event.kind == "approval"):
                    continue
                request = next((e.event for e in thread.events if e.seq == event.request_seq), None)
                if not event.approved or not isinstance(request, ApprovalRequested):
                    continue
                started = any(
                    isinstance(e.event, ToolStarted | ToolResult | ErrorEvent)
                    and getattr(e.event, "action_seq", None) == request.action_seq
                    for e in thread.events
                    if e.seq > stored.seq
                )
                kept = (
                    state.approved is not None and state.approved.action_seq == request.action_seq
                )
                assert started or kept, f"the approval at {stored.seq} was dropped"

    @invariant()
    def a_pending_request_ends_only_by_a_decision_a_cancel_or_its_time_out(self) -> None:
        for before, thread in zip(self.before, self.threads, strict=False):
            if before is None:
                continue
            now = thread.state.pending
            if now is not None and now.request_seq == before.request_seq:
                continue
            ended = [
                e.event
                for e in thread.events
                if isinstance(e.event, HumanResponse)
                and e.event.kind in ("approval", "cancel")
                and e.event.request_seq == before.request_seq
            ]
            assert ended, f"request {before.request_seq} vanished"

    @invariant()
    def status_agrees_with_what_is_pending(self) -> None:
        for thread in self.threads:
            state = thread.state
            assert (state.status == "awaiting_approval") == (state.pending is not None)


def _request_for(
    events: list[StoredEvent], action_seq: int
) -> tuple[int, ApprovalRequested] | None:
    for stored in events:
        if isinstance(stored.event, ApprovalRequested) and stored.event.action_seq == action_seq:
            return stored.seq, stored.event
    return None


def _approval_of(events: list[StoredEvent], request_seq: int) -> tuple[int, HumanResponse] | None:
    for stored in events:
        event = stored.event
        if (
            isinstance(event, HumanResponse)
            and event.kind == "approval"
            and event.approved
            and event.request_seq == request_seq
        ):
            return stored.seq, event
    return None


ApprovalMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,  # the same examples every run in CI; a fuzzing run can drop this
    suppress_health_check=[HealthCheck.too_slow],
)
TestApprovalPromise = ApprovalMachine.TestCase
