"""Outbound webhook: contacts of API threads are POSTed as JSON to ``API_WEBHOOK_URL``: the
contact (``kind``, ``audience``, ``request``, …; see ``app/contact.py``) with the event it tells
of as ``type`` and ``data``.

Each delivery carries ``X-Relaybot-Delivery`` (the outbox row id: receivers deduplicate by
it, since delivery is at least once) and ``X-Relaybot-Signature: sha256=<hex>``, an HMAC of
the body with ``SECRET_KEY``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx
from fastapi import FastAPI

from app.channel import Channel, ChannelContext
from app.errors import SendFailed
from app.store.outbox import OutboxRow

RETRYABLE_4XX = {408, 409, 425, 429}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class WebhookSender:
    def __init__(self, url: str, secret: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.secret = secret
        self.http = http

    async def send(self, row: OutboxRow) -> str | None:
        # The contact as stored, with the event it tells of at the top level too (``type``
        # and ``data``, the shape receivers had before contacts were typed).
        found = row.payload.get("event")
        event: dict[str, Any] = found if isinstance(found, dict) else {}
        body = json.dumps(
            {**event, **row.payload, "seq": row.seq, "delivery_id": row.id},
            separators=(",", ":"),
        ).encode()
        headers = {
            "content-type": "application/json",
            "x-relaybot-delivery": str(row.id),
            "x-relaybot-signature": sign(self.secret, body),
        }
        try:
            response = await self.http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SendFailed(f"webhook unreachable: {type(exc).__name__}") from exc
        if response.is_success:
            return response.headers.get("x-request-id") or str(response.status_code)
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        permanent = 400 <= response.status_code < 500 and response.status_code not in RETRYABLE_4XX
        raise SendFailed(
            f"webhook answered {response.status_code}: {response.text[:200]}",
            retry_after=retry_after,
            permanent=permanent,
        )


class WebhookPlugin:
    """The outbound webhook as a relaybot channel (``relaybot.channels`` entry point): on
    when ``API_WEBHOOK_URL`` is set, it answers API threads."""

    name = "webhook"

    def routes(self, app: FastAPI) -> None:
        pass  # outbound only

    def build(self, ctx: ChannelContext) -> Channel | None:
        url = ctx.settings.api_webhook_url
        if url is None:
            return None
        sender = WebhookSender(str(url), ctx.settings.signing_key, ctx.http)
        return Channel(name="webhook", sender=sender, answers=("api",))


plugin = WebhookPlugin()
