"""Reading an inbound message: who, to whom, what it answers, and the new text only.

Quoted history, signatures and banner lines are removed (``channels/email/reply.py``);
HTML-only mail is turned into text by html2text; every charset the message declares is
decoded; attachments are listed by name, type and size but their content is not kept.
Whether the sender is who they say is read from the ``Authentication-Results`` headers later
(``channels/email/auth.py``), which are kept as they came.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart
from email.utils import getaddresses, parseaddr

import html2text

from channels.email.auth import check_sender
from channels.email.reply import reply_text

MESSAGE_ID = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class InboundMail:
    message_id: str | None
    sender: str  # the From address, lower-cased
    recipients: list[str]  # To, Cc and Delivered-To addresses, lower-cased
    subject: str
    in_reply_to: list[str]
    references: list[str]
    text: str  # the new text: no quoted history, no signature
    body: str = ""  # the whole body, as text: what a new thread's first mail says
    attachments: list[Attachment] = field(default_factory=list)
    auth_results: list[str] = field(default_factory=list)  # Authentication-Results, top first
    thread_index: str | None = None  # Outlook's Thread-Index

    @property
    def auth_failed(self) -> bool:
        """Some Authentication-Results header reports a failure (a sender forging one only
        hurts themselves)."""
        return check_sender(self.auth_results, self.sender).verdict == "fail"

    @property
    def earlier(self) -> list[str]:
        """Message-IDs this one answers, nearest first."""
        return [*self.in_reply_to, *reversed(self.references)]


def parse(raw: bytes) -> InboundMail:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    body = _body_text(msg)
    text = reply_text(body)
    recipients = [
        addr.lower()
        for _, addr in getaddresses(
            [str(v) for h in ("to", "cc", "delivered-to") for v in msg.get_all(h, [])]
        )
        if addr
    ]
    return InboundMail(
        message_id=_first_id(msg.get("message-id")),
        sender=parseaddr(str(msg.get("from", "")))[1].lower(),
        recipients=recipients,
        subject=str(msg.get("subject", "")).strip(),
        in_reply_to=MESSAGE_ID.findall(str(msg.get("in-reply-to", ""))),
        references=MESSAGE_ID.findall(str(msg.get("references", ""))),
        text=text,
        body=body.strip(),
        attachments=_attachments(msg),
        auth_results=[str(v) for v in msg.get_all("authentication-results", [])],
        thread_index=str(msg.get("thread-index", "")).strip() or None,
    )


def _first_id(value: object) -> str | None:
    found = MESSAGE_ID.findall(str(value or ""))
    return found[0] if found else None


def _body_text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    content = _decoded(part)
    if part.get_content_type() == "text/html":
        converter = html2text.HTML2Text()
        converter.body_width = 0
        converter.ignore_images = True
        return str(converter.handle(content))
    return content


def _decoded(part: MIMEPart) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return str(part.get_content())
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")


def _attachments(msg: EmailMessage) -> list[Attachment]:
    found = []
    for part in msg.iter_attachments():
        assert isinstance(part, EmailMessage)
        # Sized from its encoded form: the content itself is never decoded or kept.
        encoded = part.get_payload(decode=False)
        length = len(encoded) if isinstance(encoded, str) else 0
        if str(part.get("content-transfer-encoding", "")).lower() == "base64":
            assert isinstance(encoded, str)
            breaks = encoded.count("\n") + encoded.count("\r")
            length = (length - breaks) * 3 // 4
        found.append(Attachment(part.get_filename() or "unnamed", part.get_content_type(), length))
    return found
