"""Text made safe to store and show: what comes from outside (JSON, Slack, mail) may hold
characters no database or encoder takes (Postgres refuses U+0000 in text and json; a lone
surrogate cannot be encoded as UTF-8). Both become U+FFFD, the replacement character, the
same way at every boundary; nothing else is changed."""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def clean(text: str) -> str:
    """``text`` with U+0000 and every lone surrogate replaced by U+FFFD."""
    return _UNSAFE.sub("\ufffd", text)
