"""Slack pieces that need no server: the manifest, mrkdwn, splitting, approver settings."""

from __future__ import annotations

import json
from pathlib import Path

from channels.slack.text import SECTION_LIMIT, mrkdwn, split

MANIFEST = Path(__file__).resolve().parent.parent / "slack" / "manifest.json"


def test_manifest_points_every_url_at_our_one_endpoint_and_asks_for_what_we_call() -> None:
    manifest = json.loads(MANIFEST.read_text())
    settings = manifest["settings"]
    urls = [
        settings["event_subscriptions"]["request_url"],
        settings["interactivity"]["request_url"],
        *(c["url"] for c in manifest["features"]["slash_commands"]),
    ]
    assert all(url.endswith("/slack/events") for url in urls)
    assert manifest["features"]["slash_commands"][0]["command"] == "/relaybot"
    events = set(settings["event_subscriptions"]["bot_events"])
    assert {"app_mention", "message.channels", "message.im"} <= events
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    # chat.postMessage/update/postEphemeral, reactions.add, usergroups.users.list, /relaybot
    assert {"chat:write", "reactions:write", "usergroups:read", "commands"} <= scopes
    assert {"app_mentions:read", "channels:history", "im:history"} <= scopes


def test_markdown_becomes_mrkdwn() -> None:
    text = "# Done\n**backend** at `v1` — [log](https://x.test/l)\n- a\n- b"
    assert mrkdwn(text) == "*Done*\n*backend* at `v1` — <https://x.test/l|log>\n• a\n• b"


def test_long_text_is_split_at_boundaries_within_the_limit() -> None:
    paragraph = ("word " * 150).strip()  # ~750 characters
    text = "\n\n".join([paragraph] * 10)
    pieces = split(text)
    assert all(len(p) <= SECTION_LIMIT for p in pieces) and len(pieces) == 3
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())  # nothing lost
    assert split("x" * 7000) == ["x" * 3000, "x" * 3000, "x" * 1000]  # no boundary: cut hard
    assert split("") == [""]
