"""Sends the outbox's Slack rows: the :eyes: reaction on a person's message, replies in the
thread, approval requests with buttons, and the update that replaces the buttons with the
decision, whoever made it (Slack, API, timer).

The provider reference stored for each row is ``CHANNEL/TS``, which later updates use.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.errors import SendFailed
from app.store.outbox import Outbox, OutboxRow
from channels.slack import blocks
from channels.slack.config import SlackAgentConfig

# Errors that the same request will always get again.
PERMANENT = {
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_auth",
    "account_inactive",
    "token_revoked",
    "msg_too_long",
    "invalid_blocks",
    "no_permission",
    "missing_scope",
    "message_not_found",
    "cant_update_message",
    "restricted_action",
}


def slack_thread(channel_key: str) -> tuple[str, str]:
    """``TEAM/CHANNEL/THREAD_TS`` -> (channel, thread_ts)."""
    _, channel, thread_ts = channel_key.split("/", 2)
    return channel, thread_ts


class SlackSender:
    def __init__(
        self, client: AsyncWebClient, outbox: Outbox, agents: Mapping[str, SlackAgentConfig]
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.agents = agents

    async def send(self, row: OutboxRow) -> str | None:
        try:
            return await self._send(row)
        except SlackApiError as exc:
            error = str(exc.response.get("error", "unknown_error"))
            if exc.response.status_code == 429 or error == "ratelimited":
                retry_after = float(exc.response.headers.get("Retry-After", 1))
                raise SendFailed("slack rate-limited the call", retry_after=retry_after) from exc
            raise SendFailed(f"slack: {error}", permanent=error in PERMANENT) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendFailed(f"slack unreachable: {type(exc).__name__}") from exc

    async def _send(self, row: OutboxRow) -> str | None:
        p = row.payload
        channel, thread_ts = self._where(p)
        data: dict[str, Any] = p["data"]
        match p["type"]:
            case "approval_requested":
                text, body = blocks.approval_request(
                    p["thread_id"], row.seq, data["intent"], data["arguments"], p.get("why")
                )
                sent = await self.client.chat_postMessage(
                    channel=channel, thread_ts=thread_ts, text=text, blocks=body
                )
                return f"{sent['channel']}/{sent['ts']}"
            case "user_message":
                return await self._seen(channel, data["ref"])
            case "human_response" if data.get("kind") == "response":
                return await self._seen(channel, data["ref"])
            case "human_response":
                return await self._show_decision(row, data)
            case "timer_fired":
                return await self._post(channel, thread_ts, self._timer_text(p, data))
            case "information_requested":
                return await self._post(channel, thread_ts, data["question"])
            case "escalated":
                return await self._post(channel, thread_ts, data["reason"])
            case "done_for_now":
                return await self._post(channel, thread_ts, data["message"])
        raise SendFailed(f"no Slack message for {p['type']}", permanent=True)

    def _where(self, p: dict[str, Any]) -> tuple[str, str | None]:
        if p.get("thread_channel") == "slack":
            return slack_thread(p["channel_key"])
        config = self.agents.get(p["agent"])
        if config is None or config.approval_channel is None:
            raise SendFailed(
                f"{p['agent'].upper()}_SLACK_APPROVAL_CHANNEL is not set", permanent=True
            )
        return config.approval_channel, None

    async def _seen(self, channel: str, ts: str) -> str:
        """The :eyes: reaction on a person's message: the bot has it and is working."""
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name="eyes")
        except SlackApiError as exc:
            if exc.response.get("error") != "already_reacted":  # a retry after a lost answer
                raise
        return f"{channel}/{ts}"

    async def _post(self, channel: str, thread_ts: str | None, markdown: str) -> str:
        first: str | None = None
        for message in blocks.text_blocks(markdown):
            fallback = message[0]["text"]["text"][:3000]
            sent = await self.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=fallback, blocks=message
            )
            first = first or f"{sent['channel']}/{sent['ts']}"
        assert first is not None
        return first

    async def _show_decision(self, row: OutboxRow, data: dict[str, Any]) -> str:
        request = row.payload["request"]
        ref = await self.outbox.provider_ref(row.thread_id, request["seq"], "slack")
        if ref is None:  # the request's own message is not out yet: update it after
            raise SendFailed("the approval message is not sent yet", retry_after=2.0)
        channel, ts = ref.split("/", 1)
        req = request["data"]
        text, body = blocks.approval_decided(
            req["intent"],
            req["arguments"],
            row.payload.get("why"),
            approved=bool(data.get("approved")),
            by=data.get("author"),
            comment=data.get("comment"),
            at=row.created_at.astimezone(UTC) if row.created_at else datetime.now(UTC),
        )
        await self.client.chat_update(channel=channel, ts=ts, text=text, blocks=body)
        return ref

    def _timer_text(self, p: dict[str, Any], data: dict[str, Any]) -> str:
        request = p.get("request", {}).get("data", {})
        what = f"approval of `{request['intent']}`" if "intent" in request else "an answer"
        if data["kind"] == "reminder":
            return f"Reminder: still waiting for {what}."
        config = self.agents.get(p["agent"])
        people = config.approvers if config and config.approvers else frozenset()
        mentions = " ".join(
            f"<!subteam^{i}>" if i.startswith("S") else f"<@{i}>" for i in sorted(people)
        )
        return f"Escalating: still waiting for {what}. {mentions}".strip()
