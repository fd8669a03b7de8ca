"""The engine: the imperative shell around the pure core.

``Engine.run(thread_id)`` steps one thread until it pauses for a person or waits out a
backoff. Each step: decide with ``core.next_move``, do the one thing decided (a model call,
a tool, an escalation, a timer), and append the resulting events — with any outbound
contacts — at the version it read, in one transaction. A conflict means someone else
appended first: reload and decide again. The events are only reloaded on a conflict.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import ValidationError

from app import core
from app.agent import Agent, Requester, Tool, ToolContext, ToolResultValue
from app.contacts import Contacts
from app.context import ContextRenderer
from app.errors import LLMError, ToolError, ToolOutcomeUnknown, VersionConflict
from app.events import (
    ActionChosen,
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
from app.llm import LLM
from app.logs import log_context
from app.metrics import LLM_COST, LLM_SECONDS, LLM_TOKENS, STEP_SECONDS, STEPS
from app.store import Store, ThreadRecord, utcnow

log = logging.getLogger(__name__)

Pace = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class EngineConfig:
    step_cap: int = 20
    tool_timeout: float = 120.0
    # After a failed model call the thread waits base * 2**(n-1) seconds before the retry.
    retry_backoff: float = 1.0


@dataclass(frozen=True)
class RunResult:
    """Where ``run`` left the thread: its version, and when it needs a worker again."""

    version: int
    run_after: datetime | None


class _Thread:
    """A worker's in-memory copy of one thread: its events and their projected state."""

    def __init__(self, record: ThreadRecord) -> None:
        self.id = record.id
        self.agent_name = record.agent
        self.channel = record.channel
        self.channel_key = record.channel_key
        self.events: list[StoredEvent] = list(record.events)
        self.state = core.project(self.events)

    def extend(self, stored: Sequence[StoredEvent]) -> None:
        self.events.extend(stored)
        self.state = core.project(stored, self.state)


class Engine:
    def __init__(
        self,
        store: Store,
        agents: Mapping[str, Agent],
        llm: LLM,
        renderer: ContextRenderer,
        http: httpx.AsyncClient,
        config: EngineConfig | None = None,
        contacts: Contacts | None = None,
    ) -> None:
        self.store = store
        self.agents = agents
        self.llm = llm
        self.renderer = renderer
        self.http = http
        self.config = config or EngineConfig()
        self.contacts = contacts or Contacts({}, "")

    async def run(self, thread_id: str, pace: Pace | None = None) -> RunResult:
        """Step the thread until it is idle, or waits out a backoff. ``pace``, if given, is
        awaited before the thread is loaded and before each step: the worker holds threads
        there while one a person just answered goes first."""
        if pace is not None:
            await pace()
        thread = _Thread(await self.store.load(thread_id))
        with log_context(thread_id=thread_id, agent=thread.agent_name):
            return await self._run(thread, pace)

    async def _run(self, thread: _Thread, pace: Pace | None) -> RunResult:
        while True:
            agent = self.agents[thread.agent_name]
            step_cap = agent.step_cap or self.config.step_cap
            now = utcnow()
            move = core.next_move(thread.state, agent, step_cap, now)
            if isinstance(move, core.Idle):
                return RunResult(thread.state.version, core.wake_at(thread.state, agent, now))
            kind = _MOVE_KINDS[type(move)]
            started = time.perf_counter()
            try:
                retry_in = await self._do(thread, agent, move)
            except VersionConflict:
                log.debug("thread %s: conflict at %s, reloading", thread.id, thread.state.version)
                thread = _Thread(await self.store.load(thread.id))
                continue
            finally:
                STEPS.labels(agent.name, kind).inc()
                STEP_SECONDS.labels(agent.name, kind).observe(time.perf_counter() - started)
            if retry_in is not None:
                return RunResult(thread.state.version, utcnow() + retry_in)
            if pace is not None:
                await pace()

    async def _do(self, thread: _Thread, agent: Agent, move: core.Move) -> timedelta | None:
        match move:
            case core.CallModel():
                return await self._call_model(thread, agent)
            case core.RunTool():
                await self._run_tool(thread, agent, move)
            case core.Escalate():
                await self._append(thread, agent, [Escalated(reason=move.reason)])
            case core.FireTimer():
                await self._append(
                    thread, agent, [TimerFired(kind=move.kind, request_seq=move.request_seq)]
                )
            case core.TimeOut():
                await self._append(thread, agent, [move.response])
            case core.Idle():
                pass
        return None

    async def _call_model(self, thread: _Thread, agent: Agent) -> timedelta | None:
        context = self.renderer.render(agent, thread.events)
        started = time.perf_counter()
        try:
            reply = await self.llm.choose(context.messages, agent)
        except LLMError as exc:
            LLM_SECONDS.labels(_model_label(self.llm), exc.kind).observe(
                time.perf_counter() - started
            )
            kind = {"timeout": "timeout", "invalid_output": "invalid_output"}.get(exc.kind, "llm")
            return await self._failed(thread, agent, ErrorEvent(kind=kind, message=exc.message))
        model = reply.model or _model_label(self.llm)
        LLM_SECONDS.labels(model, "ok").observe(time.perf_counter() - started)
        LLM_TOKENS.labels(model, "prompt").inc(reply.prompt_tokens or context.tokens)
        LLM_TOKENS.labels(model, "completion").inc(reply.completion_tokens or 0)
        LLM_COST.labels(model).inc(reply.cost_usd or 0.0)
        try:
            action = agent.parse_action(reply.action)
        except ValidationError as exc:
            message = "output did not match any action: " + _validation_summary(exc)
            return await self._failed(
                thread, agent, ErrorEvent(kind="invalid_output", message=message)
            )
        chosen_seq = thread.state.version + 1
        action_dict = action.model_dump(mode="json")
        chosen = ActionChosen(
            action=action_dict,
            model=reply.model,
            mode=reply.mode,
            prompt_tokens=reply.prompt_tokens or context.tokens,
            completion_tokens=reply.completion_tokens,
            cost_usd=reply.cost_usd,
            latency_ms=reply.latency_ms,
        )
        tool = agent.tools_by_intent.get(action.intent)
        gated = tool is not None and await self._gated(thread, tool, action_dict, chosen_seq)
        if tool is not None and not gated:
            if tool.idempotent:
                # Run it first and write choice and outcome in one append: a crash in
                # between only means the model is asked again, and the tool may re-run.
                outcome = await self._execute(thread, tool, action_dict, chosen_seq)
                await self._append(thread, agent, [chosen, outcome])
            else:
                start = ToolStarted(intent=tool.intent, action=action_dict, action_seq=chosen_seq)
                await self._append(thread, agent, [chosen, start])
                outcome = await self._execute(thread, tool, action_dict, chosen_seq)
                await self._append_fact(thread, agent, outcome)
            return None
        asks = core.consequences(
            chosen_seq,
            action_dict,
            agent,
            thread.state.last_author,
            gated=gated,
            requesters=thread.state.task_authors,
        )
        await self._append(thread, agent, [chosen, *asks])
        return None

    async def _gated(
        self, thread: _Thread, tool: Tool, action: dict[str, Any], action_seq: int
    ) -> bool:
        """Whether the call needs approval. A gate that fails asks: when in doubt, a person."""
        try:
            return await tool.gate(action, self._context(thread, action_seq, None))
        except Exception:
            log.exception("thread %s: approval gate of %s failed", thread.id, tool.intent)
            return True

    async def _failed(self, thread: _Thread, agent: Agent, error: ErrorEvent) -> timedelta | None:
        log.warning("thread %s: %s: %s", thread.id, error.kind, error.message)
        attempt = thread.state.consecutive_errors + 1
        backoff = self.config.retry_backoff * 2 ** (attempt - 1)
        last_try = attempt >= core.MAX_CONSECUTIVE_ERRORS
        retry_in = timedelta(seconds=backoff) if backoff and not last_try else None
        await self._append(thread, agent, [error], retry_in=retry_in)
        return retry_in

    async def _run_tool(self, thread: _Thread, agent: Agent, move: core.RunTool) -> None:
        """An approved tool, or one whose choice was recorded before a crash."""
        tool = agent.tools_by_intent[str(move.action["intent"])]
        approval = _approval_of(thread.events, thread.state)
        if move.record_start:
            started_event = ToolStarted(
                intent=tool.intent, action=move.action, action_seq=move.action_seq
            )
            await self._append(thread, agent, [started_event])
        outcome = await self._execute(thread, tool, move.action, move.action_seq, approval)
        await self._append_fact(thread, agent, outcome)

    def _context(
        self, thread: _Thread, action_seq: int, approval: dict[str, Any] | None
    ) -> ToolContext:
        return ToolContext(
            thread_id=thread.id,
            http=self.http,
            db=self.store.engine,
            idempotency_key=f"{thread.id}:{action_seq}",
            requester=_requester(thread.events),
            approval=approval,
        )

    async def _execute(
        self,
        thread: _Thread,
        tool: Tool,
        action: dict[str, Any],
        action_seq: int,
        approval: dict[str, Any] | None = None,
    ) -> ToolResult | ErrorEvent | Escalated:
        """Run the handler; every failure becomes a compact error event (factor 9), except
        that a non-idempotent tool whose outcome is unknown is a question for a person."""
        ctx = self._context(thread, action_seq, approval)
        started = time.perf_counter()
        try:
            call = tool.model.model_validate(action)
            value = await asyncio.wait_for(tool.handler(call, ctx), self.config.tool_timeout)
        except (ToolOutcomeUnknown, TimeoutError) as exc:
            detail = exc.message if isinstance(exc, ToolError) else "it timed out"
            if not tool.idempotent:
                return Escalated(
                    reason=f"`{tool.intent}` may or may not have run: {detail}. "
                    "It is not safe to repeat it automatically. Check, then tell me how to go on."
                )
            return _tool_error(tool, detail, action_seq)
        except ToolError as exc:
            return _tool_error(tool, exc.message, action_seq)
        except ValidationError as exc:
            return _tool_error(tool, _validation_summary(exc), action_seq)
        except Exception as exc:
            log.exception("thread %s: tool %s crashed", thread.id, tool.intent)
            return _tool_error(tool, f"{type(exc).__name__}: {exc}", action_seq)
        return ToolResult(
            intent=tool.intent,
            result=_as_text(value),
            action_seq=action_seq,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _append_fact(self, thread: _Thread, agent: Agent, event: Event) -> None:
        """A tool ran: its outcome is a fact about the world and is never dropped. If someone
        appended meanwhile, it goes on top of what they wrote."""
        while True:
            try:
                await self._append(thread, agent, [event])
                return
            except VersionConflict:
                fresh = _Thread(await self.store.load(thread.id))
                thread.events, thread.state = fresh.events, fresh.state

    async def _append(
        self,
        thread: _Thread,
        agent: Agent,
        new: Sequence[Event],
        *,
        retry_in: timedelta | None = None,
    ) -> None:
        now = utcnow()
        state = thread.state
        for i, event in enumerate(new, 1):
            state = core.apply(state, StoredEvent(thread.state.version + i, event, None, now))
        run_after = now + retry_in if retry_in else core.wake_at(state, agent, now)
        messages = self.contacts.messages(
            thread_id=thread.id,
            agent=agent.name,
            channel=thread.channel,
            channel_key=thread.channel_key,
            history=thread.events,
            new=new,
        )
        stored = await self.store.append(
            thread.id,
            thread.state.version,
            [(e, None) for e in new],
            status=state.status,
            run_after=run_after,
            messages=messages,
        )
        thread.extend(stored)
        for e in stored:
            log.info("thread %s: %s", thread.id, e.event.type, extra={"event_type": e.event.type})


_MOVE_KINDS: dict[type, str] = {
    core.CallModel: "call_model",
    core.RunTool: "run_tool",
    core.Escalate: "escalate",
    core.FireTimer: "fire_timer",
    core.TimeOut: "time_out",
    core.Idle: "idle",
}


def _tool_error(tool: Tool, detail: str, action_seq: int) -> ErrorEvent:
    return ErrorEvent(kind="tool", message=f"{tool.intent}: {detail}"[:300], action_seq=action_seq)


def _requester(events: Sequence[StoredEvent]) -> Requester | None:
    """Who started the thread: its first message's author, as its channel proved them."""
    for stored in events:
        if isinstance(stored.event, UserMessage):
            first = stored.event
            verified = bool(first.verified) or first.channel == "slack"
            return Requester(first.channel, first.author, verified and first.author is not None)
    return None


def _approval_of(events: Sequence[StoredEvent], state: core.ThreadState) -> dict[str, Any] | None:
    """The evidence of the decision that approved the call about to run, if one did."""
    approved = state.approved
    if approved is None:
        return None
    for stored in reversed(events):
        event = stored.event
        if isinstance(event, HumanResponse) and event.request_seq == approved.request_seq:
            return dict(event.evidence or {"principal": event.author, "via": event.channel})
    return {"principal": "unknown", "via": "approval"}


def _model_label(llm: LLM) -> str:
    return str(getattr(llm, "model", None) or type(llm).__name__)


def _as_text(value: ToolResultValue) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def _validation_summary(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "action"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
