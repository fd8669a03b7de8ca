"""Idempotency: an inbound delivery's key and a fingerprint of what was asked with it, so a
retry gets the first answer instead of acting twice (and the same key with another request
is an error)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.errors import IdempotencyMismatch
from app.events import StoredEvent
from app.store import DuplicateDelivery, Receipt, Store


@dataclass(frozen=True)
class Idempotency:
    """An inbound delivery's key, and a fingerprint of what was asked with it."""

    channel: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, channel: str, scope: str, key: str, request: Any) -> Idempotency:
        blob = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
        return cls(channel, f"{scope}:{key}", hashlib.sha256(blob.encode()).hexdigest()[:32])


def receipt_for(
    idem: Idempotency | None, answer: Callable[[str, list[StoredEvent]], dict[str, Any]]
) -> Receipt | None:
    if idem is None:
        return None

    def stored_answer(thread_id: str, stored: list[StoredEvent]) -> dict[str, Any]:
        return {"fingerprint": idem.fingerprint, "answer": answer(thread_id, stored)}

    return Receipt(idem.channel, idem.key, stored_answer)


async def seen(store: Store, idem: Idempotency) -> dict[str, Any] | None:
    dup = await store.get_receipt(idem.channel, idem.key)
    return None if dup is None else replay(dup, idem)


def replay(dup: DuplicateDelivery, idem: Idempotency | None) -> dict[str, Any]:
    stored = dup.response or {}
    if idem is not None and stored.get("fingerprint") != idem.fingerprint:
        raise IdempotencyMismatch(idem.key.partition(":")[2])
    answer: dict[str, Any] = stored.get("answer", {})
    return answer
