"""Reading an inbound message: who, to whom, what it answers, and the new text only.

Quoted history, signatures and banner lines are removed (``channels/email/reply.py``);
HTML-only mail is turned into text by html2text; every charset the message declares is
decoded; attachments are listed by name, type and size but their content is not kept.
Whether the sender is who they say is read from the ``Authentication-Results`` headers later
(``channels/email/auth.py``), which are kept as they came.

Mail comes from anyone, so everything is bounded (``mime.py`` bounds the structure): only a
piece of each header is read, the text kept from a body is cut at ``max_text_chars`` with a
visible marker, and HTML is converted only up to a multiple of that. Text never holds U+0000
or a lone surrogate (``app.text.clean``). A Message-ID that is too long to key a receipt, or
holds characters no ID has, is replaced by its digest, ``<sha256:…@digest>``: the same
message always gets the same key, wherever the key is used (receipts, the thread's channel
key, the references of later mail). A message that cannot be read raises
:class:`MailRejected`, never another error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses, parseaddr

import html2text

from app.text import clean
from channels.email.auth import check_sender
from channels.email.mime import (
    Attachment,
    MailRejected,
    body_and_attachments,
    decode_bytes,
    decoded_text,
    read_tree,
)
from channels.email.reply import reply_text

__all__ = ["Attachment", "InboundMail", "MailRejected", "parse", "safe_id"]

MAX_TEXT_CHARS = 50_000  # EMAIL_MAX_TEXT_CHARS
HTML_PER_TEXT_CHAR = 4  # HTML read per character of text kept: markup shrinks to text
HEADER_CHARS = 16_000  # read of one header: some 400 addresses
MAX_ID_CHARS = 250
MAX_REFERENCES = 100
MAX_AUTH_RESULTS = 20
SUBJECT_CHARS = 1_000
ADDRESS_CHARS = 320  # RFC 5321: 64 for the local part, 255 for the domain

MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_FOLD = re.compile(r"\r\n|\r|\n")
_WORD = re.compile(r"=\?([^?\s]{1,60})\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)\s+(?==\?)")
_QUOTED_OCTET = re.compile(rb"=([0-9A-Fa-f]{2})")
_READ = frozenset(
    (
        "from",
        "to",
        "cc",
        "delivered-to",
        "subject",
        "message-id",
        "in-reply-to",
        "references",
        "authentication-results",
        "thread-index",
    )
)


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


def parse(raw: bytes, *, max_text_chars: int = MAX_TEXT_CHARS) -> InboundMail:
    msg = read_tree(raw)
    headers = _Headers(msg)
    part, attachments = body_and_attachments(msg)
    body = clean(_body_text(part, max_text_chars)).strip()
    sender = parseaddr(headers.first("from"))[1].lower()
    subject = _decode_words(headers.first("subject")).strip()
    return InboundMail(
        message_id=next(iter(headers.ids("message-id")), None),
        sender=sender if len(sender) <= ADDRESS_CHARS else "",
        recipients=[
            addr.lower()[:ADDRESS_CHARS]
            for _, addr in getaddresses(headers.all("to", "cc", "delivered-to"))
            if addr
        ],
        subject=clean(_cut(subject, SUBJECT_CHARS, "")),
        in_reply_to=headers.ids("in-reply-to")[:MAX_REFERENCES],
        references=headers.ids("references", tail=True)[-MAX_REFERENCES:],
        text=reply_text(body),
        body=body,
        attachments=[
            Attachment(clean(a.name[:200]), clean(a.content_type[:200]), a.size)
            for a in attachments
        ],
        auth_results=[clean(v) for v in headers.all("authentication-results")][:MAX_AUTH_RESULTS],
        thread_index=clean(headers.first("thread-index")).strip() or None,
    )


def safe_id(found: str) -> str:
    """A Message-ID as we key it: as it came when it is short and printable, else its digest
    (a receipt's key holds 512 characters, and Postgres takes no U+0000)."""
    if len(found) <= MAX_ID_CHARS and found.isprintable():
        return found
    digest = hashlib.sha256(found.encode("utf-8", "surrogatepass")).hexdigest()
    return f"<sha256:{digest}@digest>"


class _Headers:
    """The headers we read, each value unfolded, its 8-bit bytes decoded, and bounded."""

    def __init__(self, msg: Message) -> None:
        self.fields: dict[str, list[str]] = {}
        for name, value in msg.raw_items():
            key = name.strip().lower()
            if key in _READ:
                self.fields.setdefault(key, []).append(str(value))

    def first(self, name: str) -> str:
        values = self.fields.get(name)
        return clean(_unfolded(values[0])) if values else ""

    def all(self, *names: str) -> list[str]:
        return [clean(_unfolded(v)) for name in names for v in self.fields.get(name, [])]

    def ids(self, name: str, *, tail: bool = False) -> list[str]:
        # Found before cleaning: an ID with characters no ID has is keyed by its digest.
        values = self.fields.get(name, [])
        return [safe_id(i) for v in values for i in MESSAGE_ID.findall(_unfolded(v, tail))]


def _unfolded(value: str, tail: bool = False) -> str:
    """A raw header value as text: the end of it (``tail``: References, whose nearest
    entries are last) or its start, 8-bit bytes read as UTF-8 (RFC 6532), else Latin-1."""
    value = value[-HEADER_CHARS:] if tail else value[:HEADER_CHARS]
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte made: nothing to restore
        return _FOLD.sub("", clean(value))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return _FOLD.sub("", text)


def _decode_words(text: str) -> str:
    """RFC 2047 encoded words (``=?utf-8?q?Gr=C3=BC=C3=9Fe?=``) as text; one that does not
    decode stays as it came."""
    return _WORD.sub(_word, _BETWEEN_WORDS.sub("", text))


def _word(match: re.Match[str]) -> str:
    charset, kind, data = match.group(1).partition("*")[0], match.group(2).lower(), match.group(3)
    encoded = data.encode("utf-8", "replace")
    if kind == "q":
        raw = _QUOTED_OCTET.sub(lambda m: bytes([int(m.group(1), 16)]), encoded.replace(b"_", b" "))
    else:
        try:
            raw = base64.b64decode(encoded + b"=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            return match.group(0)
    return decode_bytes(raw, charset)


def _body_text(part: Message | None, limit: int) -> str:
    if part is None:
        return ""
    content = decoded_text(part)
    if part.get_content_type() != "text/html":
        return _cut(content, limit)
    html_limit = limit * HTML_PER_TEXT_CHAR
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    text = _cut(str(converter.handle(content[:html_limit])), limit)
    if len(content) > html_limit:
        text += f"\n\n[… {len(content) - html_limit:,} more characters of HTML not kept]"
    return text


def _cut(text: str, limit: int, marker: str = "\n\n[… {n:,} more characters not kept]") -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + marker.format(n=len(text) - limit)
