"""A local HTTP receiver standing in for a webhook (deploys, payments): records each POST."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from aiohttp import web

from tests.fakes import serve_locally


class HttpSink:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        # Answers to give, in order, then 200: a status, or (status, headers).
        self.statuses: deque[int | tuple[int, dict[str, str]]] = deque()
        self.delay = 0.0  # seconds to wait before answering
        self.received = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> HttpSink:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner, self.port = await serve_locally(app)
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        answer = self.statuses.popleft() if self.statuses else 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        self.calls.append(await request.json())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.times.append(asyncio.get_running_loop().time())
        self.received.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response({"ok": status < 400}, status=status, headers=headers)
