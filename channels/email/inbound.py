"""Email in: find what a message answers, prove who sent it, and append it, or refuse it.

What it answers, first match wins:
1. a signed reply token in a recipient's plus-address (our Reply-To),
2. a signed Message-ID of ours in In-Reply-To/References (the message answered),
3. an unsigned reference: our older Message-IDs, an inbound message of a thread, or the
   root of Outlook's ``Thread-Index``,
4. nothing: the message starts a thread, its agent chosen by the address it was sent to.

Who sent it: the From address, and our receiving server's DKIM/DMARC verdict (``auth.py``).
A message whose sender fails that check appends nothing. Then, for a reply to one of our
messages (1, 2), the people it went to may answer: the approvers of the request it asked
(who decide it, by an explicit first word: ``decide.py``), or the customer who wrote (who
answer a question, or continue). A reply that only threads (3) is a message of the thread's
author or an approver, never a decision. Anyone else changes nothing. Every message is
handled once: its Message-ID is its receipt, also when it is refused.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from app import core
from app.contacts import Reply
from app.errors import NotAllowed, NotAwaiting, ThreadNotFound
from app.events import ApprovalRequested, TimerFired
from app.policy import Principal
from app.service import Idempotency, Threads
from app.settings import Settings
from app.store import Receipt
from app.store.outbox import Outbox
from channels.email.auth import SenderCheck, check_sender
from channels.email.decide import Decided, DecisionWords, read_decision
from channels.email.outbound import EmailSender
from channels.email.parse import InboundMail
from channels.email.threading import index_root, our_message, thread_of_root
from channels.email.tokens import TokenError, read_reply_token, token_from_address

log = logging.getLogger(__name__)

UNVERIFIED = "our mail server could not verify that it came from you"
LISTED_ATTACHMENTS = 20  # named in the text; a mail may carry a thousand

HOW_TO_DECIDE = (
    "Your reply did not decide the request ({why}). To decide, answer with one word first: "
    "approve, or reject followed by your reason (cancel withdraws the request). Your message "
    "was kept for the agent to read."
)


@dataclass(frozen=True)
class Outcome:
    """What became of a message (for logs, the webhook's answer and the tests)."""

    action: str  # started, continued, decided, unclear, duplicate, refused
    thread_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Target:
    """The thread a message answers; ``seq``: which message of ours (signed references
    only), ``via``: how it was found."""

    thread_id: str
    seq: int | None
    via: str


def decision_words(settings: Settings) -> DecisionWords:
    def listed(value: str) -> list[str]:
        return [w.strip() for w in value.split(",") if w.strip()]

    return DecisionWords.default().extended(
        approve=listed(settings.email_approve_words),
        reject=listed(settings.email_reject_words),
        cancel=listed(settings.email_cancel_words),
    )


class EmailInbound:
    def __init__(
        self,
        threads: Threads,
        settings: Settings,
        sender: EmailSender | None,
        outbox: Outbox | None = None,
    ) -> None:
        assert settings.email_from
        self.threads = threads
        self.settings = settings
        self.address = settings.email_from.lower()
        self.domain = self.address.partition("@")[2]
        self.sender = sender
        self.outbox = outbox or Outbox(threads.store.engine)
        self.words = decision_words(settings)
        self.authserv_ids = [a.strip() for a in settings.email_authserv_id.split(",") if a.strip()]

    async def handle(self, mail: InboundMail, raw: bytes) -> Outcome:
        """Append ``mail`` (read from ``raw`` by ``intake.Intake``, off the event loop), or
        refuse it."""
        message_id = mail.message_id or f"<{hashlib.sha256(raw).hexdigest()[:32]}@no-message-id>"
        idem = Idempotency.of("email", "message", message_id, {})
        if await self.threads.store.get_receipt(idem.channel, idem.key) is not None:
            return Outcome("duplicate")
        check = check_sender(mail.auth_results, mail.sender, self.authserv_ids)
        if check.verdict == "fail":
            return await self._refuse(mail, message_id, "the sender's authentication failed")
        if not mail.sender:
            return await self._refuse(mail, message_id, "the message has no sender address")
        try:
            target = await self._target(mail)
        except TokenError as exc:
            return await self._refuse(mail, message_id, f"the reply token is {exc.reason}")
        if target is None:
            return await self._start(mail, message_id, check, idem)
        try:
            return await self._answer(mail, message_id, check, idem, target)
        except ThreadNotFound:
            return await self._refuse(mail, message_id, "the thread does not exist")

    # -- what it answers --------------------------------------------------------------------

    async def _target(self, mail: InboundMail) -> Target | None:
        key = self.settings.signing_key
        for address in mail.recipients:
            token = self._token(address)
            if token is not None:
                found = read_reply_token(
                    key, token, max_age_days=self.settings.email_reply_token_days
                )
                return Target(found.thread_id, found.request_seq, "reply token")
        unsigned: Target | None = None
        for ref in mail.earlier[:100]:
            ours = our_message(key, ref, self.domain)
            if ours is not None and ours.signed:
                return Target(ours.thread_id, ours.seq, "signed message-id")
            if ours is not None and unsigned is None:
                unsigned = Target(ours.thread_id, None, "message-id")
        if unsigned is not None:
            return unsigned
        for ref in mail.earlier[:100]:
            seen = await self.threads.store.get_receipt("email", f"message:{ref}")
            if seen is not None and seen.thread_id is not None:
                return Target(seen.thread_id, None, "references")
        root = index_root(mail.thread_index)
        if root is not None:
            thread_id = thread_of_root(root)
            if thread_id is None:
                seen = await self.threads.store.get_receipt("email", _index_key(root))
                thread_id = seen.thread_id if seen is not None else None
            if thread_id is not None:
                return Target(thread_id, None, "thread-index")
        return None

    def _token(self, address: str) -> str | None:
        local, _, domain = address.partition("@")
        if domain != self.domain or local.partition("+")[0] != self.address.partition("@")[0]:
            return None
        return token_from_address(address)

    # -- a new thread -----------------------------------------------------------------------

    async def _start(
        self, mail: InboundMail, message_id: str, check: SenderCheck, idem: Idempotency
    ) -> Outcome:
        agent = next(
            (
                self.settings.address_agents[a]
                for a in mail.recipients
                if a in self.settings.address_agents
            ),
            None,
        )
        started = await self.threads.launch(
            _with_attachments(mail, mail.text or mail.body),
            agent=agent,
            channel="email",
            author=mail.sender,
            channel_key=message_id,  # at most 250 characters, or a digest (parse.safe_id)
            idempotency=idem,
            ref=message_id,
            subject=mail.subject,
            verified=check.verdict == "pass",
        )
        thread_id = str(started["thread_id"])
        root = index_root(mail.thread_index)
        if root is not None:  # an Outlook reply that keeps only this root finds the thread
            await self.threads.store.record_receipt(Receipt("email", _index_key(root)), thread_id)
        return Outcome("started", thread_id)

    # -- a reply ----------------------------------------------------------------------------

    async def _answer(
        self,
        mail: InboundMail,
        message_id: str,
        check: SenderCheck,
        idem: Idempotency,
        target: Target,
    ) -> Outcome:
        record = await self.threads.store.load(target.thread_id)
        author = _author(record.events)
        approvers = self.threads.policies.everyone(record.agent, "email")
        text = _with_attachments(mail, mail.text)
        if target.seq is None:  # it only threads: a message, never a decision
            if mail.sender != author and mail.sender not in approvers:
                return await self._refuse(mail, message_id, f"{mail.sender} is not in the thread")
            if mail.sender != author and not self._vouched(check):
                return await self._refuse(mail, message_id, UNVERIFIED)
            return await self._message(mail, message_id, check, idem, target.thread_id, text)
        if not 1 <= target.seq <= record.version:
            return await self._refuse(mail, message_id, "the message answered is not ours")
        audience = await self._audience(target.thread_id, target.seq, record.events)
        if audience != "approvers":
            if mail.sender != author:
                return await self._refuse(
                    mail, message_id, f"{mail.sender} may not answer this thread"
                )
            return await self._message(mail, message_id, check, idem, target.thread_id, text)
        request_seq = _request_of(record.events, target.seq)
        state = core.project(record.events)
        pending = state.pending
        if pending is None or pending.request_seq != request_seq:
            if state.status == "awaiting_response" and mail.sender in approvers:
                # An escalation to the approvers: their answer says how to go on.
                if not self._vouched(check):
                    return await self._refuse(mail, message_id, UNVERIFIED)
                return await self._message(mail, message_id, check, idem, target.thread_id, text)
            return await self._refuse(mail, message_id, "that request was already decided")
        who = Principal(
            "email",
            mail.sender,
            target.via,
            {"message_id": message_id[:200], **check.evidence()},
        )
        _, why_not = await self.threads.may_decide(target.thread_id, who)
        decision = read_decision(mail.text, self.words)
        cancel = isinstance(decision, Decided) and decision.verdict == "cancel"
        if cancel:
            _, why_not = await self.threads.may_decide(target.thread_id, who, cancel=True)
        if why_not is not None:
            return await self._refuse(mail, message_id, f"{mail.sender} may not answer for this")
        if not self._vouched(check):
            # A decider's word, decision or not, needs our server to vouch for the sender:
            # otherwise anyone could write in an approver's name.
            return await self._refuse(mail, message_id, UNVERIFIED)
        if not isinstance(decision, Decided):
            why = decision.why
            reply = Reply(
                to=mail.sender,
                text=HOW_TO_DECIDE.format(why=why),
                in_reply_to=message_id,
                subject=_re(mail.subject),
            )
            kept = await self._message(
                mail, message_id, check, idem, target.thread_id, text, reply=reply
            )
            if kept.action != "continued":
                return kept
            log.info("email %s from %s decided nothing: %s", message_id, mail.sender, why)
            return Outcome("unclear", target.thread_id, why)
        try:
            if decision.verdict == "cancel":
                await self.threads.cancel(
                    target.thread_id,
                    principal=who,
                    comment=decision.reason,
                    idempotency=idem,
                    request_seq=request_seq,
                    ref=message_id,
                )
            else:
                await self.threads.respond_approval(
                    target.thread_id,
                    approved=decision.verdict == "approve",
                    principal=who,
                    comment=decision.reason,
                    idempotency=idem,
                    request_seq=request_seq,
                    digest=pending.digest,
                    ref=message_id,
                )
        except NotAwaiting:
            return await self._refuse(mail, message_id, "that request was already decided")
        except NotAllowed as exc:
            return await self._refuse(mail, message_id, exc.reason)
        return Outcome("decided", target.thread_id)

    def _vouched(self, check: SenderCheck) -> bool:
        """Whether our server vouched for the sender, where it can (EMAIL_AUTHSERV_ID set);
        without it only a reported failure counts, and that was refused at the door."""
        return not self.authserv_ids or check.verdict == "pass"

    async def _message(
        self,
        mail: InboundMail,
        message_id: str,
        check: SenderCheck,
        idem: Idempotency,
        thread_id: str,
        text: str,
        *,
        reply: Reply | None = None,
    ) -> Outcome:
        if not text.strip():
            return await self._refuse(mail, message_id, "the reply has no text of its own")
        await self.threads.post_message(
            thread_id,
            text,
            author=mail.sender,
            channel="email",
            idempotency=idem,
            ref=message_id,
            verified=check.verdict == "pass",
            reply=reply,
        )
        return Outcome("continued", thread_id)

    async def _audience(self, thread_id: str, seq: int, events: Sequence[object]) -> str:
        """Whom our message at ``seq`` went to: as its outbox row says, else as its event
        implies (approval traffic to the approvers, the rest to the customer)."""
        payload = await self.outbox.payload_of(thread_id, seq, "email")
        if payload is not None and isinstance(payload.get("audience"), str):
            return str(payload["audience"])
        return "approvers" if _request_of(events, seq) is not None else "thread"

    async def _refuse(self, mail: InboundMail, message_id: str, reason: str) -> Outcome:
        log.warning("email %s from %s refused: %s", message_id[:200], mail.sender[:200], reason)
        await self.threads.store.record_receipt(Receipt("email", f"message:{message_id}"))
        if self.settings.email_unauthorized == "reply" and self.sender and mail.sender:
            try:
                await self.sender.notice(
                    mail.sender,
                    _re(mail.subject),
                    f"Your message changed nothing: {reason}.",
                    message_id,
                )
            except Exception as exc:  # telling them is a courtesy
                log.warning("email: could not tell %s: %s", mail.sender[:200], exc)
        return Outcome("refused", reason=reason)


def _re(subject: str) -> str:
    if not subject:
        return "Your reply to relaybot"
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


def _index_key(root: bytes) -> str:
    return f"thread-index:{root.hex()}"


def _author(events: Sequence[object]) -> str | None:
    first = events[0] if events else None
    author = getattr(getattr(first, "event", None), "author", None)
    return str(author).lower() if author else None


def _request_of(events: Sequence[object], seq: int) -> int | None:
    """The approval request our message at ``seq`` asked about, if it was about one."""
    if not 1 <= seq <= len(events):
        return None
    event = getattr(events[seq - 1], "event", None)
    if isinstance(event, ApprovalRequested):
        return seq
    if isinstance(event, TimerFired):
        return _request_of(events, event.request_seq)
    return None


def _with_attachments(mail: InboundMail, text: str) -> str:
    if not mail.attachments:
        return text
    shown = mail.attachments[:LISTED_ATTACHMENTS]
    listed = ", ".join(f"{a.name} ({a.content_type}, {a.size / 1_000_000:.1f} MB)" for a in shown)
    if len(mail.attachments) > len(shown):
        listed += f" and {len(mail.attachments) - len(shown)} more"
    return f"{text}\n\n[Attachments, not opened: {listed}]"
