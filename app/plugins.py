"""Plugins: what relaybot finds by entry point instead of importing, so that the core never
imports its channels or agents (as simonw/llm finds its plugins).

Groups: ``relaybot.agents`` (a function returning an Agent or a list of them, built from its
own settings), ``relaybot.channels`` (a ``ChannelPlugin``), ``relaybot.cli`` (a typer app,
added as a sub-command), ``relaybot.schemas`` (an agent's own tables: ``metadata`` and its
alembic ``versions`` folder). And ``module:attribute`` references named in settings
(``EXTRA_AGENTS``, ``LLM_FACTORY``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

from app.agent import Agent
from app.errors import ConfigError

AGENTS, CHANNELS, CLI, SCHEMAS = (
    "relaybot.agents",
    "relaybot.channels",
    "relaybot.cli",
    "relaybot.schemas",
)


def load_object(variable: str, spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(variable, f"{spec!r} is not of the form module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(variable, f"cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(variable, f"{module_name} has no {attribute}") from None


def plugins(group: str) -> Iterator[tuple[str, Any]]:
    """(name, loaded object) of each entry point of ``group``, in name order."""
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            yield ep.name, ep.load()
        except ImportError as exc:
            raise ConfigError(
                group, f"plugin {ep.name} ({ep.value}) failed to load: {exc}"
            ) from None


def load_agents(extra: str = "") -> dict[str, Agent]:
    """Every agent registered under ``relaybot.agents``, built from its own settings (read
    from the environment), and those of ``extra`` (``EXTRA_AGENTS``: ``module:function, …``,
    each returning an Agent or a list of them)."""
    builders = [(f"plugin {name}", build) for name, build in plugins(AGENTS)]
    for spec in filter(None, (s.strip() for s in extra.split(","))):
        builders.append((spec, load_object("EXTRA_AGENTS", spec)))
    agents: list[Agent] = []
    for origin, build in builders:
        built = build()
        for agent in built if isinstance(built, list | tuple) else [built]:
            if not isinstance(agent, Agent):
                raise ConfigError("EXTRA_AGENTS", f"{origin} returned {type(agent).__name__}")
            agents.append(agent)
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ConfigError("EXTRA_AGENTS", f"agent names clash: {sorted(names)}")
    return {a.name: a for a in agents}
