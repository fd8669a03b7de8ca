"""What one model call costs the caller: CPU and wall time per ``litellm.acompletion`` against a
local OpenAI-compatible stand-in that answers at once, through litellm's own HTTP handler
(relaybot's default, ``EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER=true``) and through the openai
SDK (``false``), next to the same request sent with plain httpx (the floor: building the
request, the round trip, parsing the answer).

    python -m benchmarks.llm_call [--calls 500]

Each variant runs in a fresh interpreter (litellm reads the setting per call, but a fresh
process keeps one variant's warm caches out of the other's figures). The stand-in runs in a
process of its own, so the CPU figure is the caller's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import app  # noqa: F401  (litellm's settings, before litellm is imported)
from benchmarks.workers import ROOT, free_port, table

ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "noop", "arguments": "{}"},
                    }
                ],
            },
        }
    ],
    "usage": {"prompt_tokens": 500, "completion_tokens": 5, "total_tokens": 505},
}
# A request shaped like relaybot's: a system prompt, the thread as one message, five tools.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name}: what it does, in a sentence or two.",
            "parameters": {
                "type": "object",
                "properties": {"tag": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["tag"],
            },
        },
    }
    for name in ("noop", "list_git_tags", "deploy_backend", "request_more_information", "done")
]
MESSAGES = [
    {"role": "system", "content": "You are deploybot. " * 40},
    {"role": "user", "content": "<thread>" + "<noop_result>ok</noop_result>\n" * 40 + "</thread>"},
]


def stand_in(port: int) -> None:
    from aiohttp import web

    body = json.dumps(ANSWER)

    async def complete(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=body, content_type="application/json")

    server = web.Application()
    server.router.add_post("/v1/chat/completions", complete)
    web.run_app(server, host="127.0.0.1", port=port, print=None)


async def calls(variant: str, port: int, n: int) -> dict[str, float]:
    base = f"http://127.0.0.1:{port}/v1"
    if variant == "httpx":
        import httpx

        async with httpx.AsyncClient() as client:

            async def one() -> None:
                request = {"model": "gpt-4o-mini", "messages": MESSAGES, "tools": TOOLS}
                reply = await client.post(f"{base}/chat/completions", json=request)
                reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]

            return await timed(one, n)
    import litellm

    async def one() -> None:
        await litellm.acompletion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice="required",
            api_base=base,
            api_key="x",
            max_retries=0,
        )

    return await timed(one, n)


async def timed(one: Any, n: int) -> dict[str, float]:
    for _ in range(50):  # warm-up: imports, connections, caches
        await one()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await one()
    return {
        "wall": (time.perf_counter() - wall) / n * 1000,
        "cpu": (time.process_time() - cpu) / n * 1000,
    }


VARIANTS = {
    "litellm, its own HTTP handler (relaybot's default)": ("litellm", "true"),
    "litellm through the openai SDK": ("litellm", "false"),
    "plain httpx (the floor)": ("httpx", "true"),
}


def main(args: argparse.Namespace) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.llm_call", "--serve", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        time.sleep(1.5)
        rows = []
        for label, (kind, handler) in VARIANTS.items():
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER": handler,
            }
            one = ["--one", kind, str(port), "--calls", str(args.calls)]
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.llm_call", *one],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            rows.append([label, f"{figures['cpu']:.2f}", f"{figures['wall']:.2f}"])
    finally:
        server.terminate()
        server.wait()
    print(
        f"## One model call, caller's side ({args.calls} calls, a stand-in that answers at once)\n"
    )
    print(table("client|CPU ms per call|wall ms per call", rows))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    if options.serve:
        stand_in(options.serve)
    elif options.one:
        kind, port = options.one
        print(json.dumps(asyncio.run(calls(kind, int(port), options.calls))))
    else:
        main(options)
