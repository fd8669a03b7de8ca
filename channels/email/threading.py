"""Which thread and which of our messages an inbound mail answers, and the headers that let
mail clients (and their replies) keep a thread together.

- Our Message-IDs are ``<THREAD.SEQ.MAC@DOMAIN>``: one per message we send (SEQ is the event
  it tells of), computable, and signed (MAC, keyed with ``SECRET_KEY``), so a reply's
  ``In-Reply-To``/``References`` names the very message answered, provably ours. The form of
  earlier versions, ``<THREAD.SEQ.email@DOMAIN>``, still names a thread, unsigned.
- Outlook keeps a conversation by its ``Thread-Index`` (base64: 22 bytes of root, then 5
  bytes per reply) and may drop ``References``. Ours carry a root made from the thread's id
  (6 bytes of its digest, then its 16 bytes), or the root of the customer's own first mail;
  an inbound mail's root names the thread either way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass

ROOT_BYTES = 22
_OURS = re.compile(
    r"<([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(\d{1,9})\.([a-z0-9]{1,32})@([^<>\s]+)>"
)


@dataclass(frozen=True)
class OurMessage:
    """One of our messages, named by a reply: its thread, the seq it told of, and whether the
    name carried our signature (a reply to a message we provably sent)."""

    thread_id: str
    seq: int
    signed: bool


def _mac(secret: str, thread_id: str, seq: int) -> str:
    digest = hmac.new(secret.encode(), f"mid:{thread_id}.{seq}".encode(), hashlib.sha256)
    return base64.b32encode(digest.digest()).decode().lower().rstrip("=")[:16]


def message_id(secret: str, thread_id: str, seq: int, domain: str) -> str:
    return f"<{thread_id}.{seq}.{_mac(secret, thread_id, seq)}@{domain}>"


def our_message(secret: str, value: str, domain: str) -> OurMessage | None:
    """The message of ours ``value`` (a Message-ID from In-Reply-To or References) names."""
    found = _OURS.fullmatch(value.strip().lower())
    if found is None or found.group(4) != domain.lower():
        return None
    thread_id, seq, mark = found.group(1), int(found.group(2)), found.group(3)
    if mark == "email":
        return OurMessage(thread_id, seq, False)
    if not hmac.compare_digest(mark, _mac(secret, thread_id, seq)):
        return None  # looks like ours, is not: names nothing
    return OurMessage(thread_id, seq, True)


def thread_index(thread_id: str, seq: int, root: bytes | None = None) -> str:
    """Our Thread-Index for the message at ``seq``: the conversation's root and a 5-byte
    child block (Outlook's own blocks hold a time delta; ours only need to differ)."""
    base = root if root is not None and len(root) == ROOT_BYTES else own_root(thread_id)
    return base64.b64encode(base + seq.to_bytes(5, "big", signed=False)).decode()


def own_root(thread_id: str) -> bytes:
    raw = uuid.UUID(thread_id).bytes
    return hashlib.sha256(raw).digest()[:6] + raw


def index_root(value: str | None) -> bytes | None:
    """The 22-byte root of a Thread-Index header, or None if it is not one."""
    if not value:
        return None
    text = "".join(str(value).split())[:400]
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < ROOT_BYTES or (len(raw) - ROOT_BYTES) % 5:
        return None
    return raw[:ROOT_BYTES]


def thread_of_root(root: bytes) -> str | None:
    """The thread an own root names (its last 16 bytes are the thread's id)."""
    raw = root[6:]
    if own_root(str(uuid.UUID(bytes=raw))) != root:
        return None
    return str(uuid.UUID(bytes=raw))
