"""Stand-ins for the benchmarks: a one-tool agent, and a model that answers at once.

EXTRA_AGENTS=benchmarks.fakes:benchbot DEFAULT_AGENT=benchbot
LLM_FACTORY=benchmarks.fakes:zero_latency_llm BENCH_STEPS=10
"""

from __future__ import annotations

import os
import re
import time
from typing import Literal

from app.agent import Action, Agent, Tool, ToolContext
from app.llm import LLMReply
from app.settings import Settings

NOOP_RESULT = "<noop_result>"
STEPS = re.compile(r"steps=(\d+)")


class Noop(Action):
    """Do nothing."""

    intent: Literal["noop"] = "noop"


async def noop(action: Noop, ctx: ToolContext) -> str:
    return "ok"


def benchbot() -> Agent:
    return Agent(name="benchbot", prompt="prompts/base.j2", tools=(Tool(Noop, noop),))


class ZeroLatencyLLM:
    """``noop`` until the thread shows its number of noop results, then ``done_for_now``.
    The number: ``steps=N`` in the thread's text if there is one, else ``steps``."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.calls: list[float] = []  # perf_counter at each call

    async def choose(self, messages: list[dict[str, str]], agent: Agent) -> LLMReply:
        self.calls.append(time.perf_counter())
        thread = messages[-1]["content"]
        wanted = int(m.group(1)) if (m := STEPS.search(thread)) else self.steps
        if thread.count(NOOP_RESULT) >= wanted:
            action: dict[str, str] = {"intent": "done_for_now", "message": "done"}
        else:
            action = {"intent": "noop"}
        return LLMReply(action=action, model="zero-latency", mode="fake", latency_ms=0.0)


def zero_latency_llm(settings: Settings) -> ZeroLatencyLLM:
    return ZeroLatencyLLM(int(os.environ.get("BENCH_STEPS", "10")))
