"""Agents for the tests of EXTRA_AGENTS loading."""

from __future__ import annotations

from typing import Literal

from agents import deploybot
from app.agent import Action, Agent, Tool, ToolContext


class Echo(Action):
    """Say something back."""

    intent: Literal["echo"] = "echo"
    text: str


async def echo(call: Echo, ctx: ToolContext) -> str:
    return call.text


def build_echo() -> Agent:
    return Agent(name="echo", prompt="prompts/base.j2", tools=(Tool(Echo, echo),))


def build_nothing() -> None:
    return None


def build_deploybot() -> Agent:
    return deploybot.build()
