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

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from app.errors import NotAllowed, NotAwaiting, SendFailed, ThreadNotFound
from app.policy import Principal
from app.service import Idempotency, Threads
from app.store import ChannelKeyTaken
from app.store.outbox import Outbox
from channels.slack import blocks
from channels.slack.config import SlackAgentConfig

log = logging.getLogger(__name__)

GROUP_TTL = 30.0
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
        outbox: Outbox | None = None,
    ) -> None:
        self.threads = threads
        self.outbox = outbox or Outbox(threads.store.engine)
        self.client = client
        self.agents = agents
        self.channel_agents = channel_agents
        self.verifier = SignatureVerifier(signing_secret)
        self._bot_user_id: str | None = None
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}  # group -> (when, members)

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

    async def on_decision(self, body: dict[str, Any], *, verdict: str) -> None:
        """A click on Approve, Reject or Cancel. It counts only on the request's own message
        (the channel and ts its outbox row recorded) and from someone the policy allows;
        Reject first asks for a reason in a modal."""
        click = _click(body)
        if click is None:
            log.warning("slack: a click without a usable button value or place: ignored")
            return
        thread_id, seq, user, channel, message_ts, thread_ts = click
        who = self._principal(body, user, channel, message_ts)
        if not await self._asked_here(thread_id, seq, channel, message_ts):
            await self._ephemeral(channel, user, thread_ts, "This button is not for a request.")
            return
        try:
            pending, why = await self.threads.may_decide(thread_id, who, cancel=verdict == "cancel")
        except ThreadNotFound:
            return
        if pending is None or pending.request_seq != seq:
            await self._ephemeral(channel, user, thread_ts, "This request was already decided.")
            return
        if why is not None:
            await self._ephemeral(
                channel, user, thread_ts, f"You are not allowed to decide `{pending.intent}`."
            )
            return
        if verdict == "reject":
            view = blocks.reject_modal(thread_id, seq, pending.intent, channel, message_ts)
            await self.client.views_open(trigger_id=body["trigger_id"], view=view)
            return
        await self._decide(thread_id, seq, who, thread_ts, verdict, None)

    async def on_reject_reason(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The modal was submitted; returns errors to show in it, or None to close it."""
        try:
            meta = json.loads(body["view"]["private_metadata"])
            user = str(body["user"]["id"])
            values = body["view"]["state"]["values"]
            reason = values[blocks.REASON_BLOCK][blocks.REASON_INPUT].get("value") or ""
            thread_id, seq = str(meta["t"]), int(meta["s"])
            channel, message_ts = str(meta["c"]), str(meta["ts"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return {blocks.REASON_BLOCK: "This form is not one of ours."}
        who = self._principal(body, user, channel, message_ts)
        if not await self._asked_here(thread_id, seq, channel, message_ts):
            return {blocks.REASON_BLOCK: "This form is not for a request."}
        decided = await self._decide(thread_id, seq, who, None, "reject", str(reason).strip())
        if decided is not None:
            return {blocks.REASON_BLOCK: decided}
        return None

    async def _decide(
        self,
        thread_id: str,
        seq: int,
        who: Principal,
        thread_ts: str | None,
        verdict: str,
        comment: str | None,
    ) -> str | None:
        """Hand the decision to the core; None if it counted, else why not (also told to
        the person, privately)."""
        try:
            if verdict == "cancel":
                await self.threads.cancel(
                    thread_id, principal=who, comment=comment or None, request_seq=seq
                )
            else:
                await self.threads.respond_approval(
                    thread_id,
                    approved=verdict == "approve",
                    principal=who,
                    comment=comment or None,
                    request_seq=seq,
                )
        except (NotAwaiting, ThreadNotFound):
            answer = "This request was already decided."
        except NotAllowed:
            answer = "You are not allowed to decide this request."
        else:
            return None
        await self._ephemeral(str(who.details["channel"]), who.id, thread_ts, answer)
        return answer

    @staticmethod
    def _principal(body: dict[str, Any], user: str, channel: str, message_ts: str) -> Principal:
        team = body.get("team") if isinstance(body.get("team"), dict) else {}
        details = {"channel": channel, "message_ts": message_ts, "team": (team or {}).get("id")}
        return Principal("slack", user, "slack signature", {k: v for k, v in details.items() if v})

    async def _asked_here(self, thread_id: str, seq: int, channel: str, message_ts: str) -> bool:
        """Whether the click came from the very message that asked (its outbox row's ref):
        a copy of the buttons elsewhere, or a made-up payload, decides nothing."""
        for _ in range(10):
            try:
                ref = await self.outbox.provider_ref(thread_id, seq, "slack")
            except SendFailed:
                return False
            if ref is not None:
                return ref == f"{channel}/{message_ts}"
            # Sent, but its ts not recorded yet (the dispatcher records it right after the
            # send): the click came quicker than that write. Wait a moment for it.
            await asyncio.sleep(0.2)
        return False

    async def member_of(self, user: str, groups: frozenset[str]) -> frozenset[str]:
        """The user groups among ``groups`` that ``user`` belongs to (for the policy). A
        group's members are kept for ``GROUP_TTL`` seconds: Slack allows this call about
        20 times a minute, and one decision asks twice (before the modal, at the append)."""
        found = set()
        now = time.monotonic()
        for group in sorted(g for g in groups if g.startswith("S")):
            cached = self._groups.get(group)
            if cached is None or now - cached[0] > GROUP_TTL:
                try:
                    members = await self.client.usergroups_users_list(usergroup=group)
                except SlackApiError as exc:
                    log.warning("slack: members of %s unknown: %s", group, exc)
                    continue
                cached = (now, frozenset(str(u) for u in members.get("users") or []))
                self._groups[group] = cached
            if user in cached[1]:
                found.add(group)
        return frozenset(found)

    async def _ephemeral(self, channel: str, user: str, thread_ts: str | None, text: str) -> None:
        try:
            await self.client.chat_postEphemeral(
                channel=channel, user=user, text=text, thread_ts=thread_ts
            )
        except SlackApiError as exc:  # telling them is a courtesy; the decision stands
            log.warning("slack: could not tell %s: %s", user, exc)

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


def _click(body: dict[str, Any]) -> tuple[str, int, str, str, str, str | None] | None:
    """(thread, request seq, user, channel, message ts, thread ts) of a button click, or None
    when the payload lacks any of them or the button's value is not ours."""
    try:
        action = body["actions"][0]
        thread_id, seq = blocks.parse_button_value(str(action["value"]))
        message = body.get("message") or {}
        user, channel = str(body["user"]["id"]), str(body["channel"]["id"])
        message_ts = str(message["ts"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    thread_ts = message.get("thread_ts")
    return thread_id, seq, user, channel, message_ts, str(thread_ts) if thread_ts else None


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
        await inbound.on_decision(body, verdict="approve")

    @app.action(blocks.REJECT)
    async def reject(body: dict[str, Any], ack: Any) -> None:
        await ack()
        await inbound.on_decision(body, verdict="reject")

    @app.action(blocks.CANCEL)
    async def cancel(body: dict[str, Any], ack: Any) -> None:
        await ack()
        await inbound.on_decision(body, verdict="cancel")

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
