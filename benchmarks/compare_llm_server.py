"""The OpenAI-compatible stand-in of ``benchmarks.compare``, in a process of its own.

    python -m benchmarks.compare_llm_server --arrivals FILE [--capture-dir DIR]

It is ``tests.fakes.llm_server.FakeLLMServer`` answering both sides by the shared script:
relaybot's requests carry the thread as one ``<thread>`` message (litellm, tool-call mode);
LangGraph's carry the message list (langchain-openai), and its final answer is plain text, as
a ReAct graph ends on a reply without tool calls. It records when a probe thread's first
request after the approval arrives, and keeps the requests of a thread tagged ``CTX-CAPTURE``
at the steps named by ``--capture-steps``. Prints ``port N`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from benchmarks.compare_common import (
    CTX,
    PROBE,
    ArrivalLog,
    next_step,
    openai_counts,
    wanted_steps,
)
from tests.fakes.llm_server import Answer, FakeLLMServer, Raw, act, prompt_text


def responder(
    server: FakeLLMServer, arrivals: ArrivalLog, capture: Path | None, capture_steps: set[int]
) -> Any:
    def respond(body: dict[str, Any]) -> Answer:
        server.requests.clear()  # FakeLLMServer keeps every body otherwise
        text = prompt_text(body)
        relaybot = "<thread>" in text
        if relaybot:
            noops, deployed = text.count("<noop_result>"), "<deploy_result>" in text
        else:
            noops, deployed = openai_counts(body.get("messages", []))
        step = next_step(wanted_steps(text), noops, deployed)
        if step == "done" and (probe := PROBE.search(text)):
            arrivals.record(probe.group(0))
        if capture is not None and step == "noop" and CTX in text and noops + 1 in capture_steps:
            side = "relaybot" if relaybot else "langgraph"
            (capture / f"{side}-step{noops + 1}.json").write_text(json.dumps(body))
        if step == "noop":
            return act("noop")
        if step == "deploy":
            return act("deploy", tag="v1")
        return act("done_for_now", message="done") if relaybot else Raw("done")

    return respond


async def serve(args: argparse.Namespace) -> None:
    server = await FakeLLMServer().start()
    capture = Path(args.capture_dir) if args.capture_dir else None
    steps = {int(s) for s in args.capture_steps.split(",") if s}
    server.responder = responder(server, ArrivalLog(args.arrivals), capture, steps)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"port {server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--arrivals", required=True, help="file that probe arrivals go to")
    parser.add_argument("--capture-dir", default=None)
    parser.add_argument("--capture-steps", default="10,100")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
