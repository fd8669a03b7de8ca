"""A local stand-in for Slack's Web API: records every call, answers like Slack.

``ratelimit["chat.postMessage"] = 1`` answers the next such call with HTTP 429,
``{"ok": false, "error": "ratelimited"}`` and ``Retry-After: 1``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from typing import Any

from aiohttp import web

from tests.fakes import serve_locally

BOT_USER = "UBOT"


class FakeSlackAPI:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ratelimit: Counter[str] = Counter()
        self.groups: dict[str, list[str]] = {}
        self.reactions: set[tuple[str, str, str]] = set()
        self.changed = asyncio.Event()
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def called(self, method: str) -> list[dict[str, Any]]:
        return [args for m, args in self.calls if m == method]

    async def start(self) -> FakeSlackAPI:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._call)  # Slack takes GET and POST
        self._runner, self.port = await serve_locally(app)
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.content_type == "application/json":
            args = await request.json()
        else:
            args = dict(await request.post())
        args.update(request.query)  # some methods send their arguments as query parameters
        for key in ("blocks", "view"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        if not request.headers.get("Authorization", "").startswith("Bearer xoxb-"):
            return web.json_response({"ok": False, "error": "not_authed"})
        if self.ratelimit[method] > 0:
            self.ratelimit[method] -= 1
            self.calls.append((f"{method}:429", args))
            body = {"ok": False, "error": "ratelimited"}
            return web.json_response(body, status=429, headers={"Retry-After": "1"})
        self.calls.append((method, args))
        self.changed.set()
        answer = self._answer(method, args)
        if method == "chat.postMessage":
            args["_ts"] = answer["ts"]  # where the message now is: a click on it says so
        return web.json_response(answer)

    def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://t.slack.com/",
                "team": "T",
                "user": "relaybot",
                "team_id": "T1",
                "user_id": BOT_USER,
                "bot_id": "BBOT",
            }
        if method in ("chat.postMessage", "chat.update"):
            ts = args.get("ts") or f"1700000000.{next(self._ts):06d}"
            return {
                "ok": True,
                "channel": args["channel"],
                "ts": ts,
                "message": {"text": args.get("text")},
            }
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}
        if method == "views.open":
            return {"ok": True, "view": {"id": "V1"}}
        if method == "reactions.add":  # Slack refuses the same reaction twice
            reaction = (str(args["channel"]), str(args["timestamp"]), str(args["name"]))
            if reaction in self.reactions:
                return {"ok": False, "error": "already_reacted"}
            self.reactions.add(reaction)
            return {"ok": True}
        if method == "usergroups.users.list":
            return {"ok": True, "users": self.groups.get(str(args.get("usergroup")), [])}
        return {"ok": True}
