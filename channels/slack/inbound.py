"""Slack in: the Bolt app (HTTP mode at POST /slack/events, or Socket Mode) and its listeners.

Listeners only verify (the signature and its 5-minute window), append, and answer:
``process_before_response`` makes Bolt answer after the append, so an event Slack saw
acknowledged is stored; a retry of it is dropped by its ``event_id`` receipt. Nothing here
waits on the model. A Slack thread is keyed ``TEAM/CHANNEL/THREAD_TS``.

Events API deliveries over HTTP (JSON bodies: mentions and messages, the bulk of the traffic)
take a direct path, :meth:`SlackInbound.events_api`, that does just that and no more; Bolt
handles interactivity and the slash command (form bodies), and everything in Socket Mode.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from app.errors import NotAwaiting, ThreadNotFound
from app.service import Idempotency, Threads
from app.store import ChannelKeyTaken
from channels.slack import blocks
from channels.slack.config import SlackAgentConfig

log = logging.getLogger(__name__)

MENTION = re.compile(r"<@[UW][A-Z0-9]+>")
# Message subtypes that are people talking; edits, joins and bot posts are not.
SPOKEN = {None, "thread_broadcast", "file_share", "me_message"}


class SlackInbound:
    def __init__(
        self,
        threads: Threads,
        client: AsyncWebClient,
        agents: Mapping[str, SlackAgentConfig],
        channel_agents: Mapping[str, str],
        signing_secret: str = "",
    ) -> None:
        self.threads = threads
        self.client = client
        self.agents = agents
        self.channel_agents = channel_agents
        self.verifier = SignatureVerifier(signing_secret)
        self._bot_user_id: str | None = None

    # -- the Events API over HTTP -----------------------------------------------------------

    async def events_api(
        self, raw: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        """One Events API delivery: (HTTP status, JSON answer or None for an empty 200).

        Verified like Bolt does it (signature, 5-minute window: else 401), then appended
        before the answer; an exception (the database is down, say) is a 500, so Slack
        delivers the event again and its ``event_id`` receipt keeps the retry from counting
        twice."""
        timestamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not (timestamp.isdigit() and self.verifier.is_valid(raw, timestamp, signature)):
            return 401, {"error": "invalid request"}
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        if not isinstance(body, dict):
            return 400, {"error": "the body is not a JSON object"}
        if body.get("type") == "url_verification":
            return 200, {"challenge": body.get("challenge")}
        event = body.get("event")
        if body.get("type") != "event_callback" or not isinstance(event, dict):
            return 200, None  # nothing we subscribe to
        if event.get("type") == "app_mention":
            await self.on_mention(body)
        elif event.get("type") == "message":
            await self.on_message(body, await self.bot_user_id(body))
        return 200, None

    async def bot_user_id(self, body: Mapping[str, Any]) -> str | None:
        """The bot's own user ID: from the delivery's authorizations, else auth.test once."""
        for grant in body.get("authorizations") or ():
            if isinstance(grant, dict) and grant.get("is_bot") and grant.get("user_id"):
                return str(grant["user_id"])
        if self._bot_user_id is None:
            try:
                self._bot_user_id = (await self.client.auth_test()).get("user_id")
            except SlackApiError as exc:
                log.warning("slack auth.test failed: %s", exc)
        return self._bot_user_id

    # -- messages -------------------------------------------------------------------------

    async def on_mention(self, body: dict[str, Any]) -> None:
        event = body["event"]
        await self._conversation(body, event, MENTION.sub("", event.get("text", "")).strip())

    async def on_message(self, body: dict[str, Any], bot_user_id: str | None) -> None:
        event = body["event"]
        if event.get("bot_id") or event.get("subtype") not in SPOKEN:
            return
        text = event.get("text", "")
        if bot_user_id and f"<@{bot_user_id}>" in text:
            return  # the app_mention event for this same message starts or continues it
        if event.get("channel_type") == "im":
            await self._conversation(body, event, text.strip())
            return
        if "thread_ts" not in event:
            return  # a channel message that is not in a thread of ours
        key = self._key(body, event)
        if await self.threads.store.find_by_channel_key("slack", key) is not None:
            await self._conversation(body, event, text.strip())

    async def _conversation(self, body: dict[str, Any], event: dict[str, Any], text: str) -> None:
        if not text:
            return
        key = self._key(body, event)
        idem = Idempotency.of("slack", "event", str(body.get("event_id", event["ts"])), {})
        author = event.get("user")
        try:
            # Most events start a thread: try that first; the transaction's constraints tell
            # us if the conversation already has one, or if this delivery was seen before.
            await self.threads.launch(
                text,
                agent=self.channel_agents.get(event["channel"]),
                channel="slack",
                author=author,
                channel_key=key,
                idempotency=idem,
                ref=event["ts"],  # the outbox adds the :eyes: reaction to it (app/contacts.py)
                check_first=False,
            )
        except ChannelKeyTaken as taken:  # the conversation has its thread: continue it
            await self.threads.post_message(
                taken.thread_id,
                text,
                author=author,
                channel="slack",
                idempotency=idem,
                ref=event["ts"],
            )

    @staticmethod
    def _key(body: dict[str, Any], event: dict[str, Any]) -> str:
        team = body.get("team_id") or event.get("team") or "-"
        return f"{team}/{event['channel']}/{event.get('thread_ts') or event['ts']}"

    # -- approvals ------------------------------------------------------------------------

    async def on_decision(self, body: dict[str, Any], *, approved: bool) -> None:
        action = body["actions"][0]
        thread_id, seq = blocks.parse_button_value(action["value"])
        user = body["user"]["id"]
        channel = body["channel"]["id"]
        thread_ts = body.get("message", {}).get("thread_ts")
        if not await self._may_decide(thread_id, user, channel, thread_ts):
            return
        if approved:
            await self._decide(thread_id, seq, user, channel, thread_ts, True, None)
            return
        _, pending, request_seq = await self.threads.pending_approval(thread_id)
        if pending is None or request_seq != seq:
            await self._ephemeral(channel, user, thread_ts, "This request was already decided.")
            return
        view = blocks.reject_modal(
            thread_id, seq, pending.intent, channel, body.get("message", {}).get("ts", "")
        )
        await self.client.views_open(trigger_id=body["trigger_id"], view=view)

    async def on_reject_reason(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The modal was submitted; returns errors to show in it, or None to close it."""
        meta = json.loads(body["view"]["private_metadata"])
        user = body["user"]["id"]
        values = body["view"]["state"]["values"]
        reason = (values[blocks.REASON_BLOCK][blocks.REASON_INPUT].get("value") or "").strip()
        if not await self._may_decide(meta["t"], user, meta["c"], None):
            return {blocks.REASON_BLOCK: "You are not allowed to decide this request."}
        if not await self._decide(meta["t"], meta["s"], user, meta["c"], None, False, reason):
            return {blocks.REASON_BLOCK: "This request was already decided."}
        return None

    async def _decide(
        self,
        thread_id: str,
        seq: int,
        user: str,
        channel: str,
        thread_ts: str | None,
        approved: bool,
        comment: str | None,
    ) -> bool:
        try:
            await self.threads.respond_approval(
                thread_id,
                approved=approved,
                comment=comment or None,
                author=user,
                channel="slack",
                request_seq=seq,
            )
        except (NotAwaiting, ThreadNotFound):
            await self._ephemeral(channel, user, thread_ts, "This request was already decided.")
            return False
        return True

    async def _may_decide(
        self, thread_id: str, user: str, channel: str, thread_ts: str | None
    ) -> bool:
        try:
            agent, pending, _ = await self.threads.pending_approval(thread_id)
        except ThreadNotFound:
            return False
        config = self.agents.get(agent, SlackAgentConfig())
        allowed = config.may_decide(pending.intent if pending else "")
        if allowed is None or user in allowed or await self._in_groups(user, allowed):
            return True
        what = f"`{pending.intent}`" if pending else "this request"
        await self._ephemeral(channel, user, thread_ts, f"You are not allowed to decide {what}.")
        return False

    async def _in_groups(self, user: str, allowed: frozenset[str]) -> bool:
        for group in (g for g in allowed if g.startswith("S")):
            members = await self.client.usergroups_users_list(usergroup=group)
            if user in members.get("users", []):
                return True
        return False

    async def _ephemeral(self, channel: str, user: str, thread_ts: str | None, text: str) -> None:
        await self.client.chat_postEphemeral(
            channel=channel, user=user, text=text, thread_ts=thread_ts
        )

    # -- /relaybot ------------------------------------------------------------------------

    async def on_command(self, body: dict[str, Any]) -> str:
        """Starts a thread under a message the bot posts for it; returns the ephemeral reply."""
        text = (body.get("text") or "").strip()
        if not text:
            return "Usage: `/relaybot <what you need>`, e.g. `/relaybot deploy the latest backend`"
        channel, user = body["channel_id"], body["user_id"]
        root = await self.client.chat_postMessage(channel=channel, text=f"<@{user}>: {text}")
        key = f"{body.get('team_id', '-')}/{channel}/{root['ts']}"
        idem = Idempotency.of("slack", "command", str(body.get("trigger_id", root["ts"])), {})
        await self.threads.launch(
            text,
            agent=self.channel_agents.get(channel),
            channel="slack",
            author=user,
            channel_key=key,
            idempotency=idem,
        )
        return "On it: I'll answer in the thread."


def build_app(inbound: SlackInbound, client: AsyncWebClient, signing_secret: str) -> AsyncApp:
    """The Bolt app (its client carries the bot token). Listeners take Bolt's arguments and
    hand over to ``inbound``."""
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        process_before_response=True,
        raise_error_for_unhandled_request=False,
    )

    @app.event("app_mention")
    async def mention(body: dict[str, Any], ack: Any) -> None:
        await inbound.on_mention(body)
        await ack()

    @app.event("message")
    async def message(body: dict[str, Any], ack: Any, context: Any) -> None:
        await inbound.on_message(body, context.get("bot_user_id"))
        await ack()

    @app.action(blocks.APPROVE)
    async def approve(body: dict[str, Any], ack: Any) -> None:
        await ack()
        await inbound.on_decision(body, approved=True)

    @app.action(blocks.REJECT)
    async def reject(body: dict[str, Any], ack: Any) -> None:
        await ack()
        await inbound.on_decision(body, approved=False)

    @app.view(blocks.REJECT_VIEW)
    async def reject_reason(body: dict[str, Any], ack: Any) -> None:
        errors = await inbound.on_reject_reason(body)
        if errors:
            await ack(response_action="errors", errors=errors)
        else:
            await ack()

    @app.command("/relaybot")
    async def command(body: dict[str, Any], ack: Any) -> None:
        await ack(await inbound.on_command(body))

    return app
