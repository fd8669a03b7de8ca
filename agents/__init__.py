"""The agents shipped with relaybot, and the registry the service builds at start-up."""

from __future__ import annotations

from app.agent import Agent
from app.errors import ConfigError
from app.plugins import load_object


def load_agents(extra: str = "") -> dict[str, Agent]:
    """Build every shipped agent from its own settings (read from the environment), and
    the agents of ``extra`` (``EXTRA_AGENTS``: ``module:function, …``, each returning an
    Agent or a list of them)."""
    from agents import deploybot, refunds

    agents: list[Agent] = [deploybot.build(), refunds.build()]
    for spec in filter(None, (s.strip() for s in extra.split(","))):
        built = load_object("EXTRA_AGENTS", spec)()
        for agent in built if isinstance(built, list | tuple) else [built]:
            if not isinstance(agent, Agent):
                raise ConfigError("EXTRA_AGENTS", f"{spec} returned {type(agent).__name__}")
            agents.append(agent)
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ConfigError("EXTRA_AGENTS", f"agent names clash: {sorted(names)}")
    return {a.name: a for a in agents}
