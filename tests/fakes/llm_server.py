"""A local OpenAI-compatible server with scripted answers, reached through litellm's real
HTTP path. It records every request and answers in the mode the request asked for.

    server.script(act("list_git_tags"), Fail(500), Raw("not json"), act("done_for_now", message=""))

``refuse`` lists modes the server rejects with 400, as servers without them do
(``tools_required``, ``tools_auto``, ``json_schema``, ``json_object``).
``responder`` (body -> answer) replaces the script for concurrent or scripted-by-content use.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import serve_locally


@dataclass(frozen=True)
class Act:
    """Answer with this action (as a tool call, or as JSON content in the JSON modes)."""

    intent: str
    args: dict[str, Any] = field(default_factory=dict)


def act(intent: str, **args: Any) -> Act:
    return Act(intent, args)


@dataclass(frozen=True)
class Raw:
    """Answer with this text as the message content (no tool call)."""

    content: str


@dataclass(frozen=True)
class Fail:
    status: int
    message: str = "scripted failure"


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: Act | Raw | Fail


@dataclass(frozen=True)
class Hold:
    """Answer only once the test sets ``gate``."""

    gate: asyncio.Event
    then: Act | Raw | Fail


Answer = Act | Raw | Fail | Delay | Hold


def request_mode(body: dict[str, Any]) -> str:
    if "tools" in body:
        return "tools_required" if body.get("tool_choice") in ("required", "any") else "tools_auto"
    kind = (body.get("response_format") or {}).get("type")
    return {"json_schema": "json_schema", "json_object": "json_object"}.get(kind, "plain")


def prompt_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body.get("messages", []))


class FakeLLMServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.modes: list[str] = []
        self.user_agents: list[str] = []
        self.refuse: set[str] = set()
        self.responder: Callable[[dict[str, Any]], Answer] | None = None
        self._script: deque[Answer] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.received = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *answers: Answer) -> None:
        self._script.extend(answers)

    @property
    def unused(self) -> int:
        return len(self._script)

    def prompts(self) -> list[str]:
        return [prompt_text(b) for b in self.requests]

    async def start(self) -> FakeLLMServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner, self.port = await serve_locally(app)
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.user_agents.append(request.headers.get("User-Agent", ""))
        mode = request_mode(body)
        if mode in self.refuse:
            self.modes.append(f"refused:{mode}")
            return _error(400, f"{mode} is not supported by this server")
        self.requests.append(body)
        self.modes.append(mode)
        self.received.set()
        answer: Answer | None
        if self.responder is not None:
            answer = self.responder(body)
        else:
            answer = self._script.popleft() if self._script else None
        if answer is None:
            return _error(500, "the test scripted no answer for this request")
        while isinstance(answer, Delay | Hold):
            if isinstance(answer, Hold):
                await answer.gate.wait()
            else:
                await asyncio.sleep(answer.seconds)
            answer = answer.then
        if isinstance(answer, Fail):
            return _error(answer.status, answer.message)
        message: dict[str, Any] = {"role": "assistant", "content": None}
        finish = "stop"
        if isinstance(answer, Raw):
            message["content"] = answer.content
        elif mode.startswith("tools"):
            call_id = f"call_{next(self._ids)}"
            function = {"name": answer.intent, "arguments": json.dumps(answer.args)}
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
            finish = "tool_calls"
        else:
            message["content"] = json.dumps({"next_step": {"intent": answer.intent, **answer.args}})
        return web.json_response(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
            }
        )


def _error(status: int, message: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)
