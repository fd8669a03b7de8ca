"""Slack settings per agent, read once at start-up from the environment.

``<AGENT>_SLACK_APPROVERS``: user IDs (``U…``) or user groups (``S…``) who may decide that
agent's approvals; ``<AGENT>_<TOOL>_SLACK_APPROVERS`` narrows one tool. Unset: anyone who can
see the message may decide. ``<AGENT>_SLACK_APPROVAL_CHANNEL``: where approval requests go
for that agent's threads that did not start in Slack.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from app.agent import Agent


def _ids(value: str | None) -> frozenset[str] | None:
    if value is None or not value.strip():
        return None
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def _env_name(*parts: str) -> str:
    return "_".join(p.upper().replace("-", "_") for p in parts)


@dataclass(frozen=True)
class SlackAgentConfig:
    approvers: frozenset[str] | None = None
    tool_approvers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    approval_channel: str | None = None

    def may_decide(self, tool: str) -> frozenset[str] | None:
        """Who may decide ``tool`` (users and groups); None means anyone."""
        return self.tool_approvers.get(tool, self.approvers)


def read_agent_configs(
    agents: Iterable[Agent], environ: Mapping[str, str] = os.environ
) -> dict[str, SlackAgentConfig]:
    configs = {}
    for agent in agents:
        tools = {
            tool.intent: ids
            for tool in agent.tools
            if (ids := _ids(environ.get(_env_name(agent.name, tool.intent, "SLACK_APPROVERS"))))
        }
        configs[agent.name] = SlackAgentConfig(
            approvers=_ids(environ.get(_env_name(agent.name, "SLACK_APPROVERS"))),
            tool_approvers=tools,
            approval_channel=environ.get(_env_name(agent.name, "SLACK_APPROVAL_CHANNEL")) or None,
        )
    return configs
