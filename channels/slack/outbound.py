"""Sends the outbox's Slack rows: the :eyes: reaction on a person's message, replies in the
thread, approval requests with buttons, and the update that replaces the buttons with the
decision, whoever made it (Slack, API, timer).

The provider reference stored for each row is ``CHANNEL/TS``, which later updates use.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from app.contact import (
    ApprovalRequest,
    Attention,
    Contact,
    Decided,
    Notice,
    Question,
    Reminder,
    Result,
    Seen,
    contact_of,
)
from app.errors import SendFailed
from app.policy import Policies
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
        self,
        client: AsyncWebClient,
        outbox: Outbox,
        agents: Mapping[str, SlackAgentConfig],
        policies: Policies | None = None,
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.agents = agents
        self.policies = policies or Policies()

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
        try:
            contact = contact_of(row.payload)
        except ValueError as exc:
            raise SendFailed("not a contact this version knows", permanent=True) from exc
        channel, thread_ts = self._where(contact)
        match contact:
            case Seen():
                return await self._seen(channel, contact.ref)
            case ApprovalRequest():
                request = contact.request
                text, body = blocks.approval_request(
                    contact.thread_id,
                    request.seq,
                    request.intent or "",
                    request.arguments,
                    contact.why,
                )
                sent = await self.client.chat_postMessage(
                    channel=channel, thread_ts=thread_ts, text=text, blocks=body
                )
                return f"{sent['channel']}/{sent['ts']}"
            case Decided():
                return await self._show_decision(row, contact)
            case Reminder():
                return await self._post(channel, thread_ts, self._timer_text(contact))
            case Question() | Result() | Attention() | Notice():
                return await self._post(channel, thread_ts, contact.text)
        raise SendFailed(f"no Slack message for {contact.kind}", permanent=True)

    def _where(self, contact: Contact) -> tuple[str, str | None]:
        if contact.thread_channel == "slack" and contact.channel_key:
            return slack_thread(contact.channel_key)
        config = self.agents.get(contact.agent)
        if config is None or config.approval_channel is None:
            raise SendFailed(
                f"{contact.agent.upper()}_SLACK_APPROVAL_CHANNEL is not set", permanent=True
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

    async def _show_decision(self, row: OutboxRow, contact: Decided) -> str:
        request = contact.request
        if request is None or request.intent is None:
            raise SendFailed("a decision without its request", permanent=True)
        ref = await self.outbox.provider_ref(row.thread_id, request.seq, "slack")
        if ref is None:  # the request's own message is not out yet: update it after
            raise SendFailed("the approval message is not sent yet", retry_after=2.0)
        channel, ts = ref.split("/", 1)
        text, body = blocks.approval_decided(
            request.intent,
            request.arguments,
            contact.why,
            approved=contact.verdict == "approved",
            cancelled=contact.verdict == "cancelled",
            by=contact.by,
            comment=contact.comment,
            at=row.created_at.astimezone(UTC) if row.created_at else datetime.now(UTC),
        )
        await self.client.chat_update(channel=channel, ts=ts, text=text, blocks=body)
        return ref

    def _timer_text(self, contact: Reminder) -> str:
        request = contact.request
        what = f"approval of `{request.intent}`" if request and request.intent else "an answer"
        if contact.step == "reminder":
            return f"Reminder: still waiting for {what}."
        people = self.policies.everyone(contact.agent, "slack")
        mentions = " ".join(
            f"<!subteam^{i}>" if i.startswith("S") else f"<@{i}>" for i in sorted(people)
        )
        return f"Escalating: still waiting for {what}. {mentions}".strip()
