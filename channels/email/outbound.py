"""Sends the outbox's email contacts with aiosmtplib: multipart text and HTML from
templates/email, threaded the way mail clients group conversations (our own signed
Message-ID, In-Reply-To, References, Outlook's Thread-Index, "Re:" subjects), with a Reply-To
whose plus-address carries a signed token for the thread and the open request when it fits
in an address (RFC 5321: 64 octets before the @; else the plain address: replies are matched
by the signed Message-ID they answer).

Whom a contact goes to was decided by the core (``contact.to``, ``contact.audience``); this
module only renders and delivers it.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib
import jinja2

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
from app.settings import Settings
from app.store.outbox import Outbox, OutboxRow
from channels.email.threading import index_root, message_id, thread_index
from channels.email.tokens import LinkSigner, plus_address, reply_token

LOCAL_PART_LIMIT = 64  # RFC 5321, section 4.5.3.1.1


class EmailSender:
    def __init__(
        self,
        settings: Settings,
        env: jinja2.Environment,
        outbox: Outbox,
        links: LinkSigner,
    ) -> None:
        assert settings.email_from and settings.smtp_host
        self.settings = settings
        self.address = settings.email_from
        self.domain = settings.email_from.partition("@")[2]
        self.env = env
        self.outbox = outbox
        self.links = links

    async def send(self, row: OutboxRow) -> str | None:
        try:
            contact = contact_of(row.payload)
        except ValueError as exc:
            raise SendFailed("not a contact this version knows", permanent=True) from exc
        if isinstance(contact, Decided | Seen):
            return None  # Slack updates its message; by email there is nothing to say
        msg = await self.compose(contact)
        await self.deliver(msg)
        return str(msg["Message-ID"])

    def message_id(self, thread_id: str, seq: int) -> str:
        return message_id(self.settings.signing_key, thread_id, seq, self.domain)

    def reply_to(self, thread_id: str, request_seq: int) -> str:
        """A Reply-To with the signed token when it fits in an address, else the bot's own."""
        token = reply_token(self.settings.signing_key, thread_id, request_seq)
        address = plus_address(self.address, token)
        if len(address.partition("@")[0].encode()) > LOCAL_PART_LIMIT:
            return self.address
        return address

    async def compose(self, contact: Contact) -> EmailMessage:
        if isinstance(contact, Notice):
            return self._notice(contact)
        thread_id = contact.thread_id
        request = getattr(contact, "request", None)
        request_seq = request.seq if request is not None else contact.seq
        recipients = [a for a in contact.to if a]
        if not recipients:
            what = "approvers" if contact.audience == "approvers" else "requester address"
            raise SendFailed(f"the contact has no {what}", permanent=True)
        conversation = contact.conversation
        root = index_root(conversation.thread_index) if conversation else None
        if contact.audience == "approvers":
            subject, earlier = await self._approval_thread(contact, request_seq)
        else:
            subject = f"Re: {conversation.subject if conversation else 'your request'}"
            known = conversation.messages if conversation else []
            earlier = [self._ref(m, thread_id) for m in known]
        context = self._context(contact, request_seq)
        msg = EmailMessage()
        msg["From"] = f"relaybot <{self.address}>"
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject.strip()
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = self.message_id(thread_id, contact.seq)
        msg["Reply-To"] = self.reply_to(thread_id, request_seq)
        msg["Thread-Index"] = thread_index(thread_id, contact.seq, root)
        if earlier:
            msg["In-Reply-To"] = earlier[-1]
            msg["References"] = " ".join([earlier[0], *earlier[1:][-20:]])
        msg.set_content(self.env.get_template("email/contact.txt.j2").render(**context))
        msg.add_alternative(
            self.env.get_template("email/contact.html.j2").render(**context), subtype="html"
        )
        return msg

    def _notice(self, contact: Notice) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = f"relaybot <{self.address}>"
        msg["To"] = ", ".join(contact.to)
        msg["Subject"] = contact.subject or "Your message to relaybot"
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = self.message_id(contact.thread_id, contact.seq)
        if contact.in_reply_to:
            msg["In-Reply-To"] = contact.in_reply_to
            msg["References"] = contact.in_reply_to
        msg.set_content(contact.text)
        return msg

    async def notice(self, to: str, subject: str, text: str, in_reply_to: str | None) -> None:
        """A short direct answer (a refused reply, say): not part of any thread."""
        msg = EmailMessage()
        msg["From"] = f"relaybot <{self.address}>"
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
        msg.set_content(text)
        await self.deliver(msg)

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

    async def _approval_thread(self, contact: Contact, request_seq: int) -> tuple[str, list[str]]:
        """Approval mail is its own conversation with the approvers, per request."""
        request = getattr(contact, "request", None)
        intent = request.intent if request is not None else None
        topic = (
            f"Approval needed: {intent} ({contact.agent})"
            if intent
            else f"Needs attention ({contact.agent})"
        )
        if contact.seq == request_seq:
            return topic, []
        first = await self.outbox.provider_ref(contact.thread_id, request_seq, "email")
        return f"Re: {topic}", [first] if first else []

    def _ref(self, item: dict[str, Any], thread_id: str) -> str:
        if "ref" in item:
            return str(item["ref"])
        return self.message_id(thread_id, int(item["seq"]))

    def _context(self, contact: Contact, request_seq: int) -> dict[str, Any]:
        request = getattr(contact, "request", None)
        approval = request is not None and request.intent is not None
        urls: dict[str, str] = {}
        if approval and isinstance(contact, ApprovalRequest | Reminder):
            base = self.settings.base_url
            for decision in ("approve", "reject"):
                token = self.links.sign(
                    contact.thread_id, request_seq, decision, sorted(contact.to)
                )
                urls[f"{decision}_url"] = f"{base}/email/decide/{token}"
        text = contact.text if isinstance(contact, Question | Result | Attention) else ""
        return {
            "kind": contact.kind,
            "contact": contact,
            "request": request,
            "why": getattr(contact, "why", None),
            "text": text,
            "agent": contact.agent,
            "link_hours": self.settings.email_link_hours,
            **urls,
        }
