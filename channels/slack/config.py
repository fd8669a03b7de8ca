"""Slack settings per agent, read once at start-up from the environment.

``<AGENT>_SLACK_APPROVAL_CHANNEL``: where approval requests go for that agent's threads that
did not start in Slack. Who may decide (``<AGENT>_SLACK_APPROVERS`` and the rest) is the
agent's approval policy, read by the core (``app/policy.py``) for every channel alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.agent import Agent


def _env_name(*parts: str) -> str:
    return "_".join(p.upper().replace("-", "_") for p in parts)


@dataclass(frozen=True)
class SlackAgentConfig:
    approval_channel: str | None = None


def read_agent_configs(
    agents: Iterable[Agent], environ: Mapping[str, str] = os.environ
) -> dict[str, SlackAgentConfig]:
    return {
        agent.name: SlackAgentConfig(
            approval_channel=environ.get(_env_name(agent.name, "SLACK_APPROVAL_CHANNEL")) or None,
        )
        for agent in agents
    }
