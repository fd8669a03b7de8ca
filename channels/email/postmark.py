"""Postmark's inbound webhook JSON as the message it describes, for the one parser we have.

The message is written out directly (headers in UTF-8, as RFC 6532 allows; the bodies as
they came), not built with ``EmailMessage``, whose header parsing is quadratic on a long
address list and raises on values it dislikes. Any JSON object makes a message: a field of
the wrong type counts as missing, text loses U+0000, lone surrogates and line breaks where
they would end a header. Attachments keep their name, type and (base64) content when
Postmark sent it, a placeholder of nothing otherwise: only their listing is ever read.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from app.text import clean
from channels.email.mime import MailRejected
from channels.email.parse import InboundMail, parse

COPIED_HEADERS = {"in-reply-to", "references", "authentication-results", "delivered-to"}
_LINE_BREAKS = re.compile(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")
_CONTENT_TYPE = re.compile(r"[\w.+-]{1,100}/[\w.+-]{1,100}")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")
_NAME = re.compile(r"[^\w .,()+-]")


def parse_postmark(body: bytes, *, max_text_chars: int) -> InboundMail:
    """The mail a webhook's body (Postmark's JSON) describes; MailRejected if it is not JSON
    or not an object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested past the decoder's stack
        raise MailRejected("it is not JSON") from None
    return parse(postmark_to_mime(data), max_text_chars=max_text_chars)


def postmark_to_mime(data: Any) -> bytes:
    """The message ``data`` (Postmark's inbound JSON, parsed) describes; MailRejected when
    it is not a JSON object."""
    if not isinstance(data, dict):
        raise MailRejected("it is not a Postmark inbound message (a JSON object)")
    lines: list[str] = []
    headers = data.get("Headers")
    for header in headers if isinstance(headers, list) else []:
        if not isinstance(header, dict):
            continue
        name, value = _text(header.get("Name")), _text(header.get("Value"))
        if name.lower() in COPIED_HEADERS:
            lines.append(f"{name}: {_header_value(value)}")
    for name, field in (("From", "From"), ("To", "To"), ("Cc", "Cc"), ("Subject", "Subject")):
        value = _header_value(_text(data.get(field)))
        if value or name in ("From", "To", "Subject"):
            lines.append(f"{name}: {value}")
    message_id = _header_value(_text(data.get("MessageID")))
    if message_id:
        bracketed = message_id if message_id.startswith("<") else f"<{message_id}>"
        lines.append(f"Message-ID: {bracketed}")
    lines.append("MIME-Version: 1.0")
    text, html = _text(data.get("TextBody")), _text(data.get("HtmlBody"))
    parts = [("plain", text)] if text else []
    parts += [("html", html)] if html or not text else []
    attachments = data.get("Attachments")
    files = [a for a in attachments if isinstance(a, dict)] if isinstance(attachments, list) else []
    head = "\r\n".join(lines) + "\r\n"
    if len(parts) == 1 and not files:
        return (head + _text_part(*parts[0])).encode("utf-8")
    boundary = _boundary(text, html)
    body = _multipart("alternative", [_text_part(*p) for p in parts], boundary + "a")
    if files:
        body = _multipart("mixed", [body, *map(_attachment, files)], boundary + "m")
    return (head + body).encode("utf-8")


def _text(value: object) -> str:
    return clean(value) if isinstance(value, str) else ""


def _header_value(value: str) -> str:
    return _LINE_BREAKS.sub(" ", value).strip()


def _text_part(subtype: str, content: str) -> str:
    return (
        f"Content-Type: text/{subtype}; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{content}"
    )


def _attachment(attachment: dict[str, Any]) -> str:
    kind = _text(attachment.get("ContentType"))
    kind = kind if _CONTENT_TYPE.fullmatch(kind) else "application/octet-stream"
    name = _NAME.sub("_", _text(attachment.get("Name")))[:200] or "unnamed"
    content = _text(attachment.get("Content"))
    content = content if _BASE64.fullmatch(content) else ""
    return (
        f'Content-Type: {kind}; name="{name}"\r\n'
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{content}"
    )


def _multipart(subtype: str, parts: list[str], boundary: str) -> str:
    inner = "".join(f"\r\n--{boundary}\r\n{part}" for part in parts)
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'
        f"{inner}\r\n--{boundary}--\r\n"
    )


def _boundary(*contents: str) -> str:
    """A boundary none of the bodies holds (a random one, checked)."""
    while True:
        boundary = f"=_relaybot_{uuid.uuid4().hex}"
        if not any(boundary in content for content in contents):
            return boundary
