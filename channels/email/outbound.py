"""Sends the outbox's email rows with aiosmtplib: multipart text and HTML from templates/email,
threaded the way mail clients group conversations (our own Message-ID, In-Reply-To,
References, "Re:" subjects), with a Reply-To whose plus-address carries a signed token for the
thread and the open request.

Our Message-IDs are ``<THREAD.SEQ.email@DOMAIN>``: one per outbox row, and computable, so
replies and later messages can refer to them without a lookup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib
import jinja2

from app.errors import SendFailed
from app.settings import Settings
from app.store.outbox import Outbox, OutboxRow
from channels.email.tokens import LinkSigner, plus_address, reply_token

APPROVAL_TRAFFIC = {"approval_requested", "timer_fired", "escalated"}


def message_id(thread_id: str, seq: int, domain: str) -> str:
    return f"<{thread_id}.{seq}.email@{domain}>"


def thread_of_message_id(value: str, domain: str) -> str | None:
    found = re.fullmatch(rf"<([0-9a-f-]{{36}})\.\d+\.email@{re.escape(domain)}>", value)
    return found.group(1) if found else None


class EmailSender:
    def __init__(
        self,
        settings: Settings,
        env: jinja2.Environment,
        outbox: Outbox,
        approvers: Mapping[str, Sequence[str]],
        links: LinkSigner,
    ) -> None:
        assert settings.email_from and settings.smtp_host
        self.settings = settings
        self.address = settings.email_from
        self.domain = settings.email_from.partition("@")[2]
        self.env = env
        self.outbox = outbox
        self.approvers = approvers
        self.links = links

    async def send(self, row: OutboxRow) -> str | None:
        if row.payload["type"] == "human_response":
            return None  # a decision: Slack updates its message; by email there is nothing to say
        msg = await self.compose(row)
        await self.deliver(msg)
        return str(msg["Message-ID"])

    async def compose(self, row: OutboxRow) -> EmailMessage:
        p = row.payload
        kind = p["type"]
        thread_id = p["thread_id"]
        ours = message_id(thread_id, row.seq, self.domain)
        conversation: dict[str, Any] = p.get("email") or {}
        to_approvers = kind in APPROVAL_TRAFFIC or p.get("thread_channel") != "email"
        if to_approvers:
            recipients = list(self.approvers.get(p["agent"], []))
            if not recipients:
                raise SendFailed(f"{p['agent'].upper()}_EMAIL_APPROVERS is not set", permanent=True)
            request_seq = p.get("request", {}).get("seq", row.seq)
            subject, earlier = await self._approval_thread(p, row.seq, request_seq)
        else:
            requester = conversation.get("requester")
            if not requester:
                raise SendFailed("the thread has no requester address", permanent=True)
            recipients = [requester]
            request_seq = row.seq
            subject = f"Re: {conversation.get('subject', '')}".strip()
            earlier = [self._ref(m, thread_id) for m in conversation.get("messages", [])]
        context = self._context(p, thread_id, request_seq)
        msg = EmailMessage()
        msg["From"] = f"relaybot <{self.address}>"
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = ours
        msg["Reply-To"] = plus_address(
            self.address, reply_token(self.settings.signing_key, thread_id, request_seq)
        )
        if earlier:
            msg["In-Reply-To"] = earlier[-1]
            msg["References"] = " ".join([earlier[0], *earlier[1:][-20:]])
        msg.set_content(self.env.get_template("email/contact.txt.j2").render(**context))
        msg.add_alternative(
            self.env.get_template("email/contact.html.j2").render(**context), subtype="html"
        )
        return msg

    async def deliver(self, msg: EmailMessage) -> None:
        s = self.settings
        try:
            await aiosmtplib.send(
                msg,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password,
                use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls",
                timeout=30,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise SendFailed(f"recipients refused: {exc}", permanent=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.code < 600
            raise SendFailed(f"SMTP {exc.code}: {exc.message}", permanent=permanent) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise SendFailed(f"SMTP unreachable: {type(exc).__name__}") from exc

    async def _approval_thread(
        self, p: dict[str, Any], seq: int, request_seq: int
    ) -> tuple[str, list[str]]:
        """Approval mail is its own conversation with the approvers, per request."""
        intent = p.get("data", {}).get("intent") or p.get("request", {}).get("data", {}).get(
            "intent"
        )
        topic = (
            f"Approval needed: {intent} ({p['agent']})"
            if intent
            else f"Needs attention ({p['agent']})"
        )
        if seq == request_seq:
            return topic, []
        first = await self.outbox.provider_ref(p["thread_id"], request_seq, "email")
        return f"Re: {topic}", [first] if first else []

    def _ref(self, item: dict[str, Any], thread_id: str) -> str:
        return (
            str(item["ref"]) if "ref" in item else message_id(thread_id, item["seq"], self.domain)
        )

    def _context(self, p: dict[str, Any], thread_id: str, request_seq: int) -> dict[str, Any]:
        data = p.get("data", {})
        text = data.get("message") or data.get("question") or data.get("reason") or ""
        approval = p["type"] == "approval_requested" or (
            p["type"] == "timer_fired" and p.get("request", {}).get("type") == "approval_requested"
        )
        base = self.settings.base_url
        urls: dict[str, str] = {}
        if approval:
            for decision in ("approve", "reject"):
                token = self.links.sign(thread_id, request_seq, decision)
                urls[f"{decision}_url"] = f"{base}/email/decide/{token}"
        return {
            "kind": p["type"],
            "data": data,
            "request": p.get("request"),
            "why": p.get("why"),
            "text": text,
            "agent": p["agent"],
            "link_hours": self.settings.email_link_hours,
            **urls,
        }

    async def notice(self, to: str, subject: str, text: str, in_reply_to: str | None) -> None:
        """A short direct answer (an unauthorized reply, say): not part of any thread."""
        msg = EmailMessage()
        msg["From"] = f"relaybot <{self.address}>"
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
        msg.set_content(text)
        await self.deliver(msg)
