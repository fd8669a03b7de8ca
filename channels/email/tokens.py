"""Signed tokens. A reply token rides in the Reply-To's plus-address, so it must fit an
address's 64-character local part: ``<thread base32>.<request seq>.<day>.<mac>``, about 45
characters. Link tokens are longer (itsdangerous, with a timestamp) and live in URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

DAY = 86_400


@dataclass(frozen=True)
class ReplyTarget:
    thread_id: str
    request_seq: int


class TokenError(Exception):
    """The token is forged, malformed or expired; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _mac(secret: str, text: str) -> str:
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower().rstrip("=")[:12]


def reply_token(secret: str, thread_id: str, request_seq: int, now: float | None = None) -> str:
    thread = base64.b32encode(uuid.UUID(thread_id).bytes).decode().lower().rstrip("=")
    body = f"{thread}.{request_seq}.{int((now or time.time()) // DAY)}"
    return f"{body}.{_mac(secret, body)}"


def read_reply_token(
    secret: str, token: str, *, max_age_days: int, now: float | None = None
) -> ReplyTarget:
    """The thread and request a token names; TokenError if it is not one of ours, intact
    and recent. Any text in, never another error: tokens come from strangers' mail."""
    if not token.isascii() or len(token) > 128:
        raise TokenError("malformed")
    parts = token.lower().split(".")
    if len(parts) != 4 or not all(p.isalnum() for p in parts):
        raise TokenError("malformed")
    thread, seq, day, mac = parts
    if not hmac.compare_digest(mac, _mac(secret, f"{thread}.{seq}.{day}")):
        raise TokenError("forged")
    try:
        if int((now or time.time()) // DAY) - int(day) > max_age_days:
            raise TokenError("expired")
        raw = base64.b32decode(thread.upper() + "=" * (-len(thread) % 8))
        return ReplyTarget(str(uuid.UUID(bytes=raw)), int(seq))
    except (ValueError, binascii.Error):
        raise TokenError("malformed") from None


def plus_address(address: str, token: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local}+{token}@{domain}"


def token_from_address(address: str) -> str | None:
    local = address.partition("@")[0]
    return local.partition("+")[2] or None


class LinkSigner:
    """One-click approval links: signed, expiring; single use is enforced by the caller."""

    def __init__(self, secret: str, max_age: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="relaybot-approval-link")
        self.max_age = max_age

    def sign(
        self, thread_id: str, request_seq: int, decision: str, sent_to: list[str] | None = None
    ) -> str:
        """``sent_to``: the addresses of the mail the link goes in (who may hold it)."""
        data: dict[str, Any] = {"t": thread_id, "s": request_seq, "d": decision}
        if sent_to:
            data["r"] = sent_to
        return self._serializer.dumps(data)

    def read(self, token: str) -> dict[str, Any]:
        try:
            data = self._serializer.loads(token, max_age=self.max_age)
        except SignatureExpired:
            raise TokenError("expired") from None
        except (BadSignature, UnicodeError, ValueError):
            raise TokenError("forged") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("t"), str)
            or not isinstance(data.get("s"), int)
            or data.get("d") not in ("approve", "reject")
        ):
            raise TokenError("malformed")
        return data
