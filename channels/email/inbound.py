"""Email in: match a message to its thread and append it.

Matching: the Reply-To token (plus-address) names the thread and the open request; otherwise
In-Reply-To/References name a message of a thread (ours carry the thread id, others are
found by their receipt); otherwise the message starts a thread, with the agent chosen by the
address it was sent to. Every message is appended once: its Message-ID is its receipt.

A decision ("approve", "yes", "lgtm" / "reject …", "no …" on the first line) needs a valid
token for the open request, and a From address among the agent's email approvers with no
failed DKIM/SPF/DMARC result. Anything else changes nothing and is logged, or answered.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.errors import NotAwaiting, ThreadNotFound
from app.service import Idempotency, Threads
from app.settings import Settings
from channels.email.outbound import EmailSender, thread_of_message_id
from channels.email.parse import InboundMail, parse
from channels.email.tokens import TokenError, read_reply_token, token_from_address

log = logging.getLogger(__name__)

APPROVE = {"approve", "approved", "yes", "y", "lgtm", "ok", "okay"}
REJECT = {"reject", "rejected", "no", "n", "deny", "denied"}
FIRST_WORD = re.compile(r"^\s*([A-Za-z]+)[\s.,:;!-]*(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Outcome:
    """What became of a message (for logs, the webhook's answer and the tests)."""

    action: str  # started, continued, decided, duplicate, refused
    thread_id: str | None = None
    reason: str | None = None


def decision(text: str) -> tuple[bool, str | None] | None:
    """(approved, reason) if the first line decides, else None."""
    first, _, rest = text.strip().partition("\n")
    found = FIRST_WORD.match(first)
    if not found:
        return None
    word, tail = found.group(1).lower(), found.group(2).strip()
    if word in APPROVE:  # a comment on the same line; the rest is sign-off and small talk
        return True, tail or None
    if word in REJECT:  # the rest of the message is the reason
        return False, "\n".join(p for p in (tail, rest.strip()) if p) or None
    return None


class EmailInbound:
    def __init__(
        self,
        threads: Threads,
        settings: Settings,
        approvers: Mapping[str, Sequence[str]],
        sender: EmailSender | None,
    ) -> None:
        assert settings.email_from
        self.threads = threads
        self.settings = settings
        self.address = settings.email_from.lower()
        self.domain = self.address.partition("@")[2]
        self.approvers = {a: {x.lower() for x in xs} for a, xs in approvers.items()}
        self.sender = sender

    async def receive(self, raw: bytes) -> Outcome:
        mail = parse(raw)
        message_id = mail.message_id or f"<{hashlib.sha256(raw).hexdigest()[:32]}@no-message-id>"
        idem = Idempotency.of("email", "message", message_id, {})
        if await self.threads.store.get_receipt(idem.channel, idem.key) is not None:
            return Outcome("duplicate")
        text = _with_attachments(mail)
        token = next(filter(None, (self._token(a) for a in mail.recipients)), None)
        if token is not None:
            return await self._reply_with_token(mail, message_id, token, text, idem)
        thread_id = await self._thread_of(mail)
        if thread_id is not None and await self._may_continue(thread_id, mail.sender):
            await self.threads.post_message(
                thread_id,
                text,
                author=mail.sender,
                channel="email",
                idempotency=idem,
                ref=message_id,
            )
            return Outcome("continued", thread_id)
        agent = next(
            (
                self.settings.address_agents[a]
                for a in mail.recipients
                if a in self.settings.address_agents
            ),
            None,
        )
        started = await self.threads.launch(
            text,
            agent=agent,
            channel="email",
            author=mail.sender,
            channel_key=message_id,
            idempotency=idem,
            ref=message_id,
            subject=mail.subject,
        )
        return Outcome("started", started["thread_id"])

    async def _reply_with_token(
        self, mail: InboundMail, message_id: str, token: str, text: str, idem: Idempotency
    ) -> Outcome:
        try:
            target = read_reply_token(
                self.settings.signing_key, token, max_age_days=self.settings.email_reply_token_days
            )
            agent, _, _ = await self.threads.pending_approval(target.thread_id)
        except TokenError as exc:
            return await self._refuse(mail, message_id, f"the reply token is {exc.reason}")
        except ThreadNotFound:
            return await self._refuse(mail, message_id, "the thread does not exist")
        allowed = self.approvers.get(agent, set())
        if mail.sender not in allowed:
            return await self._refuse(mail, message_id, f"{mail.sender} may not answer for {agent}")
        if mail.auth_failed:
            return await self._refuse(mail, message_id, "the sender's authentication failed")
        decided = decision(text)
        try:
            if decided is not None:
                approved, reason = decided
                await self.threads.respond_approval(
                    target.thread_id,
                    approved=approved,
                    comment=reason,
                    author=mail.sender,
                    channel="email",
                    idempotency=idem,
                    request_seq=target.request_seq,
                )
                return Outcome("decided", target.thread_id)
            await self.threads.post_message(
                target.thread_id,
                text,
                author=mail.sender,
                channel="email",
                idempotency=idem,
                ref=message_id,
            )
        except NotAwaiting:
            return await self._refuse(mail, message_id, "that request was already decided")
        return Outcome("continued", target.thread_id)

    def _token(self, address: str) -> str | None:
        local, _, domain = address.partition("@")
        if domain != self.domain or local.partition("+")[0] != self.address.partition("@")[0]:
            return None
        return token_from_address(address)

    async def _thread_of(self, mail: InboundMail) -> str | None:
        for ref in mail.earlier:
            if (ours := thread_of_message_id(ref, self.domain)) is not None:
                return ours
            seen = await self.threads.store.get_receipt("email", f"message:{ref}")
            if seen is not None and seen.thread_id is not None:
                return seen.thread_id
        return None

    async def _may_continue(self, thread_id: str, sender: str) -> bool:
        """Only the person who started the thread (or an approver) continues it by reply;
        anyone else who replies to a copy starts a thread of their own."""
        try:
            record = await self.threads.store.load(thread_id)
        except ThreadNotFound:
            return False
        starter = record.events[0].event
        author = getattr(starter, "author", None)
        return sender == author or sender in self.approvers.get(record.agent, set())

    async def _refuse(self, mail: InboundMail, message_id: str, reason: str) -> Outcome:
        log.warning("email %s from %s refused: %s", message_id, mail.sender, reason)
        from app.store import Receipt

        await self.threads.store.record_receipt(Receipt("email", f"message:{message_id}"))
        if self.settings.email_unauthorized == "reply" and self.sender and mail.sender:
            subject = f"Re: {mail.subject}" if mail.subject else "Your reply to relaybot"
            await self.sender.notice(
                mail.sender, subject, f"Your message changed nothing: {reason}.", message_id
            )
        return Outcome("refused", reason=reason)


def _with_attachments(mail: InboundMail) -> str:
    if not mail.attachments:
        return mail.text
    listed = ", ".join(
        f"{a.name} ({a.content_type}, {a.size / 1_000_000:.1f} MB)" for a in mail.attachments
    )
    return f"{mail.text}\n\n[Attachments, not opened: {listed}]"
