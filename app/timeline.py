"""A thread as a readable timeline, for ``relaybot threads show``."""

from __future__ import annotations

from typing import Any

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
    TimerFired,
    ToolResult,
    ToolStarted,
    UserMessage,
)
from app.store import ThreadRecord
from app.store.outbox import OutboxRow

WIDTH = 72


def _one_line(text: str, width: int = WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def describe(event: Event) -> str:
    match event:
        case UserMessage():
            return f"{event.author or 'someone'} via {event.channel}: {event.text}"
        case ActionChosen():
            args = ", ".join(f"{k}={v!r}" for k, v in event.action.items() if k != "intent")
            return f"{event.intent}({args})"
        case ToolStarted():
            return f"{event.intent} started"
        case ToolResult():
            return f"{event.intent} -> {event.result}"
        case ErrorEvent():
            return f"[{event.kind}] {event.message}"
        case ApprovalRequested():
            return f"waiting for approval of {event.intent}"
        case HumanResponse():
            who = f"{event.author or 'someone'} via {event.channel}"
            if event.kind in ("approval", "cancel"):
                if event.kind == "cancel":
                    verdict = "cancelled"
                else:
                    verdict = "approved" if event.approved else "rejected"
                return f"{who}: {verdict}" + (f": {event.comment}" if event.comment else "")
            return f"{who}: {event.text}"
        case InformationRequested():
            return f"asked: {event.question}"
        case TimerFired():
            return f"{event.kind} sent for the request at seq {event.request_seq}"
        case Escalated():
            return f"escalated: {event.reason}"
        case Retried():
            return f"{event.author or 'an operator'} asked to retry the failed step"
        case DoneForNow():
            return f"done: {event.message}"


def _evidence(evidence: dict[str, Any] | None) -> str:
    """How a decision was proven, in a line: principal, channel proof, verdicts, digest."""
    if not evidence:
        return "no evidence recorded"
    parts = [str(evidence.get("principal", "?")), f"by {evidence.get('via', '?')}"]
    details = evidence.get("details") or {}
    parts += [f"{k}={v}" for k, v in details.items() if k not in ("message_id",)]
    if evidence.get("groups"):
        parts.append("groups=" + ",".join(evidence["groups"]))
    if evidence.get("digest"):
        parts.append(f"args {str(evidence['digest'])[:12]}")
    return "; ".join(parts)


def _dollars(amount: float | None) -> str:
    return f"${amount:.4f}" if amount else ""


def format_timeline(record: ThreadRecord, outbox: list[OutboxRow] | None = None) -> str:
    lines = [
        f"thread {record.id}",
        f"agent {record.agent}   status {record.status}   channel {record.channel}"
        f"   created {record.created_at:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"{'SEQ':>4}  {'TIME':8}  {'EVENT':21}  {'TOKENS':>11}  {'COST':>9}  {'LATENCY':>9}  "
        "DETAIL",
    ]
    prompt_total = completion_total = 0
    model_ms = cost_total = 0.0
    models: dict[str, int] = {}
    for stored in record.events:
        ev = stored.event
        tokens = latency = cost = ""
        if isinstance(ev, ActionChosen):
            prompt_total += ev.prompt_tokens or 0
            completion_total += ev.completion_tokens or 0
            model_ms += ev.latency_ms or 0.0
            cost_total += ev.cost_usd or 0.0
            models[ev.model or "?"] = models.get(ev.model or "?", 0) + 1
            tokens = f"{ev.prompt_tokens or 0}/{ev.completion_tokens or 0}"
            cost = _dollars(ev.cost_usd)
            latency = f"{ev.latency_ms:.0f} ms" if ev.latency_ms is not None else ""
        elif isinstance(ev, ToolResult) and ev.latency_ms is not None:
            latency = f"{ev.latency_ms:.0f} ms"
        lines.append(
            f"{stored.seq:>4}  {stored.created_at:%H:%M:%S}  {ev.type:21}  {tokens:>11}  "
            f"{cost:>9}  {latency:>9}  {_one_line(describe(ev))}"
        )
        if isinstance(ev, HumanResponse) and ev.kind != "response":
            lines.append(f"{'':>77}evidence: {_evidence(ev.evidence)}")
    calls = sum(models.values())
    used = ", ".join(f"{name} x{n}" for name, n in models.items())
    lines += [
        "",
        f"{calls} model calls" + (f" ({used})" if used else ""),
        f"tokens: {prompt_total} prompt + {completion_total} completion; "
        f"cost: {_dollars(cost_total) or '$0 (no price known)'}; "
        f"{model_ms / 1000:.2f} s waiting on the model",
    ]
    if outbox:
        lines += ["", "outbound messages:"]
        for row in outbox:
            ref = f" ref {row.provider_ref}" if row.provider_ref else ""
            error = f": {_one_line(row.last_error, 60)}" if row.last_error else ""
            lines.append(
                f"  #{row.id} seq {row.seq} via {row.channel}: {row.status.upper()} after "
                f"{row.attempts} attempt(s){ref}{error}"
            )
    return "\n".join(lines)
