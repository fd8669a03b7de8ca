"""The deployment guide's configuration table lists exactly the settings the code reads, and
the local stack sets only settings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agents.deploybot import DeploybotSettings
from agents.refunds import RefundsSettings
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "deploy.md"


# Read per agent (and tool) by app/policy.py and channels/slack/config.py.
PER_AGENT = {
    "<AGENT>_SLACK_APPROVERS",
    "<AGENT>_<TOOL>_SLACK_APPROVERS",
    "<AGENT>_SLACK_APPROVAL_CHANNEL",
    "<AGENT>_EMAIL_APPROVERS",
    "<AGENT>_<TOOL>_EMAIL_APPROVERS",
    "<AGENT>_API_APPROVERS",
    "<AGENT>_<TOOL>_API_APPROVERS",
    "<AGENT>_FOUR_EYES",
    "<AGENT>_<TOOL>_FOUR_EYES",
}


def documented() -> set[str]:
    section = GUIDE.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for cell in re.findall(r"^\| `([^|]+)` \|", section, flags=re.MULTILINE):
        if cell.startswith("<AGENT>"):
            names.add(cell)
        else:
            names |= set(re.findall(r"[A-Z][A-Z0-9_]+", cell))
    return names


def settings_read() -> set[str]:
    expected = {name.upper() for name in Settings.model_fields} | PER_AGENT
    expected |= {f"DEPLOYBOT_{name.upper()}" for name in DeploybotSettings.model_fields}
    expected |= {f"REFUNDS_{name.upper()}" for name in RefundsSettings.model_fields}
    return expected


def test_the_guide_documents_every_setting_and_no_other() -> None:
    assert documented() == settings_read()


def test_the_local_stack_sets_only_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "web", "worker", "mail"} <= set(services)
    known = settings_read()
    per_agent = re.compile(
        r"^(DEPLOYBOT|REFUNDS)_(\w+_)?(SLACK_APPROVERS|EMAIL_APPROVERS|API_APPROVERS|FOUR_EYES)$"
    )
    provider_keys = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}  # read by litellm itself
    for name in ("web", "worker"):
        env = services[name]["environment"]
        unknown = {k for k in env if k not in known | provider_keys and not per_agent.match(k)}
        assert not unknown, f"{name} sets {unknown}, which relaybot does not read"
    assert services["web"]["command"][:2] == ["relaybot", "serve"]
    assert services["worker"]["command"][:2] == ["relaybot", "worker"]


def test_per_agent_approval_settings_are_the_ones_read() -> None:
    from agents import deploybot
    from app.policy import read_policies
    from channels.slack.config import read_agent_configs

    env = {
        "DEPLOYBOT_SLACK_APPROVERS": "U1, S2",
        "DEPLOYBOT_EMAIL_APPROVERS": "Ops@Example.com",
        "DEPLOYBOT_DEPLOY_BACKEND_SLACK_APPROVERS": "U3",
        "DEPLOYBOT_DEPLOY_BACKEND_FOUR_EYES": "true",
        "DEPLOYBOT_API_APPROVERS": "console",
        "DEPLOYBOT_SLACK_APPROVAL_CHANNEL": "C9",
    }
    agent = deploybot.build()
    policies = read_policies([(agent.name, [t.intent for t in agent.tools])], env)
    backend = policies.for_call("deploybot", "deploy_backend")
    assert backend.ids("slack") == {"U3"} and backend.four_eyes
    assert backend.ids("email") == {"ops@example.com"} and backend.ids("api") == {"console"}
    frontend = policies.for_call("deploybot", "deploy_frontend")
    assert frontend.ids("slack") == {"U1", "S2"} and not frontend.four_eyes
    assert read_agent_configs([agent], env)["deploybot"].approval_channel == "C9"
