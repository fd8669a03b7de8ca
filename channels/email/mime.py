"""The MIME structure of a stranger's message, read within bounds.

The stdlib's feedparser reads the message (in its compat32 form: headers stay text, never
handed to the structured header classes, whose parse of a long address list takes quadratic
time). A policy of our own counts what it meets while it reads, so an absurd message stops
early: too many header fields, a MIME header too long to parse quickly, too many nested
containers (the feedparser recurses once per level, and a thousand levels exhaust Python's
stack). The tree is then walked without recursion, the body chosen as ``EmailMessage.get_body``
chooses it (the first plain text part that is not an attachment, else the first HTML one), and
every other leaf listed as an attachment from its encoded size: its content is never decoded.

Anything out of bounds raises :class:`MailRejected`, and the same message always does.
"""

from __future__ import annotations

import email
from dataclasses import dataclass
from email.message import Message
from email.policy import Compat32

MAX_MESSAGE_BYTES = 40_000_000
MAX_HEADER_FIELDS = 10_000  # in the whole message, every part's headers counted
MAX_MIME_HEADER_CHARS = 8_000  # one Content-* header: its parameters are parsed on every read
MAX_HEADER_CHARS = 1_000_000  # any other header: only a bounded piece of it is ever read
MAX_CONTAINERS = 200  # multipart and message parts: each is a level of the parser's recursion
MAX_PARTS = 1_000
MAX_DEPTH = 100


class MailRejected(Exception):
    """The message cannot be read within our bounds, or is not a message; ``reason`` says
    why. Permanent: reading it again gives the same answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    size: int


@dataclass
class _Count:
    fields: int = 0
    containers: int = 0


class _Guarded(Compat32):
    """compat32, counting what the parser meets (the parser calls this for every header)."""

    count: _Count

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "count", _Count())  # policies are frozen; one per message

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        self.count.fields += 1
        if self.count.fields > MAX_HEADER_FIELDS:
            raise MailRejected(f"it has more than {MAX_HEADER_FIELDS:,} header fields")
        key = name.lower()
        if key.startswith("content-") and len(value) > MAX_MIME_HEADER_CHARS:
            limit = MAX_MIME_HEADER_CHARS
            raise MailRejected(f"its {key[:40]} header is over {limit:,} characters")
        if len(value) > MAX_HEADER_CHARS:
            raise MailRejected(f"a header is over {MAX_HEADER_CHARS:,} characters")
        if key == "content-type" and value.lstrip().lower().startswith(("multipart/", "message/")):
            self.count.containers += 1
            if self.count.containers > MAX_CONTAINERS:
                raise MailRejected(f"it has more than {MAX_CONTAINERS} nested MIME parts")
        return name, value


def read_tree(raw: bytes) -> Message:
    """The parsed message; MailRejected if it is too large, too deep or too wide."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MailRejected(f"it is larger than {MAX_MESSAGE_BYTES // 1_000_000} MB")
    policy = _Guarded()
    try:
        msg = email.message_from_bytes(raw, policy=policy)
    except RecursionError:  # a backstop: MAX_CONTAINERS stops such a message first
        raise MailRejected("its MIME parts are nested too deep") from None
    walk(msg)  # checks the bounds that only the whole tree shows
    return msg


def walk(msg: Message) -> list[tuple[Message, int]]:
    """Every part with its depth, in reading order, without recursion."""
    found: list[tuple[Message, int]] = []
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MailRejected(f"its MIME parts are nested more than {MAX_DEPTH} deep")
        found.append((part, depth))
        if len(found) > MAX_PARTS:
            raise MailRejected(f"it has more than {MAX_PARTS:,} MIME parts")
        if part.is_multipart():  # (a leaf's get_payload would decode it)
            children = [c for c in part.get_payload() if isinstance(c, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))
    return found


def _leaves(msg: Message) -> list[tuple[Message, bool]]:
    """The parts that hold content, in reading order, each with whether it may be the body:
    a forwarded message (``message/*``) is one leaf, as is everything under an attachment,
    and of a related part only the root may be the body (the rest are what it shows)."""
    found: list[tuple[Message, bool]] = []
    stack = [(msg, True)]
    while stack:
        part, may_be_body = stack.pop()
        if (
            part.is_multipart()
            and part.get_content_maintype() == "multipart"
            and not _is_attachment(part)
        ):
            children = [c for c in part.get_payload() if isinstance(c, Message)]
            related = part.get_content_subtype() == "related"
            stack.extend(
                (child, may_be_body and not (related and i > 0))
                for i, child in reversed(list(enumerate(children)))
            )
        else:
            found.append((part, may_be_body))
    return found


def body_and_attachments(msg: Message) -> tuple[Message | None, list[Attachment]]:
    leaves = _leaves(msg)
    texts = [
        part
        for part, may_be_body in leaves
        if may_be_body
        and not _is_attachment(part)
        and part.get_content_type() in ("text/plain", "text/html")
    ]
    body = next((p for p in texts if p.get_content_type() == "text/plain"), None)
    body = body or next(iter(texts), None)
    # The body's other alternatives, and inline text around it, are not attachments.
    inline = {id(p) for p in texts if p.get_filename() is None}
    attachments = [_attachment(p) for p, _ in leaves if p is not body and id(p) not in inline]
    return body, attachments


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("content-disposition", "")).partition(";")[0]
    return disposition.strip().lower() == "attachment"


def _attachment(part: Message) -> Attachment:
    kind = part.get_content_type()
    name = part.get_filename() or ("forwarded message" if kind.startswith("message/") else None)
    return Attachment(str(name or "unnamed"), kind, _size(part))


def _size(part: Message) -> int:
    """The decoded size, from the encoded form (the content itself is never decoded)."""
    total = 0
    for leaf, _ in walk(part):
        if leaf.is_multipart():
            continue
        try:
            encoded = leaf.get_payload(decode=False)
        except ValueError:  # 8-bit content in a charset no codec takes ("utf-8\0"): decoded
            total += len(leaf.get_payload(decode=True) or b"")
            continue
        if not isinstance(encoded, str):
            continue
        length = len(encoded)
        if str(leaf.get("content-transfer-encoding", "")).strip().lower() == "base64":
            breaks = encoded.count("\n") + encoded.count("\r")
            length = (length - breaks) * 3 // 4
        total += length
    return total


def decoded_text(part: Message) -> str:
    """A text part's content as text: its transfer encoding undone, its charset decoded
    (an unknown or unusable charset as UTF-8), nothing raised."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):  # a multipart: never chosen as a body
        return ""
    return decode_bytes(payload, part.get_content_charset() or "utf-8")


def decode_bytes(raw: bytes, charset: str) -> str:
    """``raw`` in ``charset``, or as UTF-8 when Python does not know the charset or it is not
    a text encoding ("base64", "idna"), or is no name at all ("utf-8\\0"); never raises."""
    try:
        return raw.decode(charset, errors="replace")
    except (LookupError, ValueError):
        return raw.decode("utf-8", errors="replace")
