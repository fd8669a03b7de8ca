"""Block Kit messages: approval requests with buttons, and what they become once decided."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from channels.slack.text import SECTION_LIMIT, mrkdwn, split

APPROVE, REJECT, CANCEL = "relaybot_approve", "relaybot_reject", "relaybot_cancel"
REJECT_VIEW = "relaybot_reject_reason"
REASON_BLOCK, REASON_INPUT = "reason", "reason_input"


def button_value(thread_id: str, request_seq: int) -> str:
    return json.dumps({"t": thread_id, "s": request_seq}, separators=(",", ":"))


def parse_button_value(value: str) -> tuple[str, int]:
    """(thread id, request seq); ValueError for anything that is not a value of ours."""
    data = json.loads(value)
    if not isinstance(data, dict) or not isinstance(data.get("s"), int):
        raise ValueError("not a relaybot button value")
    return str(data["t"]), int(data["s"])


def _arguments(arguments: dict[str, Any]) -> str:
    if not arguments:
        return "_no arguments_"
    lines = [
        f"• *{k}*: `{json.dumps(v) if not isinstance(v, str) else v}`" for k, v in arguments.items()
    ]
    return "\n".join(lines)[:SECTION_LIMIT]


def _request_sections(
    intent: str, arguments: dict[str, Any], why: str | None
) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Approval needed:* `{intent}`"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _arguments(arguments)}},
    ]
    if why:
        context = f"Why: {split(mrkdwn(why), 2900)[0]}"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return blocks


def approval_request(
    thread_id: str, request_seq: int, intent: str, arguments: dict[str, Any], why: str | None
) -> tuple[str, list[dict[str, Any]]]:
    value = button_value(thread_id, request_seq)
    actions = {
        "type": "actions",
        "block_id": f"decide:{request_seq}",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE,
                "style": "primary",
                "value": value,
                "text": {"type": "plain_text", "text": "Approve"},
            },
            {
                "type": "button",
                "action_id": REJECT,
                "style": "danger",
                "value": value,
                "text": {"type": "plain_text", "text": "Reject"},
            },
            {
                "type": "button",
                "action_id": CANCEL,
                "value": value,
                "text": {"type": "plain_text", "text": "Cancel request"},
            },
        ],
    }
    text = f"Approval needed: {intent} {json.dumps(arguments)}"
    return text, [*_request_sections(intent, arguments, why), actions]


def approval_decided(
    intent: str,
    arguments: dict[str, Any],
    why: str | None,
    *,
    approved: bool,
    by: str | None,
    comment: str | None,
    at: datetime,
    cancelled: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    if by == "timer":
        outcome = f":hourglass: *Rejected automatically*: {comment}"
    else:
        who = f"<@{by}>" if by and by.startswith(("U", "W")) else (by or "someone")
        if cancelled:
            verdict = ":no_entry_sign: *Cancelled*"
        else:
            verdict = ":white_check_mark: *Approved*" if approved else ":x: *Rejected*"
        outcome = f"{verdict} by {who}" + (f": {mrkdwn(comment)}" if comment else "")
    stamp = f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{at:%Y-%m-%d %H:%M} UTC>"
    outcome_block = {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": f"{outcome} · {stamp}"}],
    }
    verdict_text = "cancelled" if cancelled else "approved" if approved else "rejected"
    return f"{intent} {verdict_text}", [*_request_sections(intent, arguments, why), outcome_block]


def reject_modal(
    thread_id: str, request_seq: int, intent: str, channel: str, ts: str
) -> dict[str, Any]:
    metadata = json.dumps({"t": thread_id, "s": request_seq, "c": channel, "ts": ts})
    return {
        "type": "modal",
        "callback_id": REJECT_VIEW,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Reject"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"Why reject `{intent}`? The agent reads it."},
            },
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                },
            },
        ],
    }


def text_blocks(markdown: str) -> list[list[dict[str, Any]]]:
    """Messages (each a list of section blocks) for a possibly long markdown text."""
    sections = [
        {"type": "section", "text": {"type": "mrkdwn", "text": piece}}
        for piece in split(mrkdwn(markdown))
    ]
    return [sections[i : i + 40] for i in range(0, len(sections), 40)]
