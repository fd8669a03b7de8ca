"""Markdown to Slack mrkdwn, and splitting long text within Slack's limits."""

from __future__ import annotations

from markdown_to_mrkdwn import SlackMarkdownConverter

# A section block's text holds 3,000 characters; a message, 50 blocks.
SECTION_LIMIT = 3000

_converter = SlackMarkdownConverter()


def mrkdwn(markdown: str) -> str:
    return str(_converter.convert(markdown))


def split(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at paragraph, line or word boundaries."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n\n"), window.rfind("\n"), window.rfind(" "))
        if cut < limit // 2:  # no good boundary: cut hard
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not pieces:
        pieces.append(rest)
    return pieces
