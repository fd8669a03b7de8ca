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


# Read per agent (and tool) by channels/slack/config.py.
PER_AGENT = {
    "<AGENT>_SLACK_APPROVERS",
    "<AGENT>_<TOOL>_SLACK_APPROVERS",
    "<AGENT>_SLACK_APPROVAL_CHANNEL",
    "<AGENT>_EMAIL_APPROVERS",
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
    per_agent = re.compile(r"^(DEPLOYBOT|REFUNDS)_(\w+_)?(SLACK_APPROVERS|EMAIL_APPROVERS)$")
    provider_keys = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}  # read by litellm itself
    for name in ("web", "worker"):
        env = services[name]["environment"]
        unknown = {k for k in env if k not in known | provider_keys and not per_agent.match(k)}
        assert not unknown, f"{name} sets {unknown}, which relaybot does not read"
    assert services["web"]["command"][:2] == ["relaybot", "serve"]
    assert services["worker"]["command"][:2] == ["relaybot", "worker"]


def test_per_agent_slack_settings_are_the_ones_read() -> None:
    from agents import deploybot
    from channels.slack.config import read_agent_configs

    env = {
        "DEPLOYBOT_SLACK_APPROVERS": "U1, S2",
        "DEPLOYBOT_DEPLOY_BACKEND_SLACK_APPROVERS": "U3",
        "DEPLOYBOT_SLACK_APPROVAL_CHANNEL": "C9",
    }
    config = read_agent_configs([deploybot.build()], env)["deploybot"]
    assert config.may_decide("deploy_backend") == {"U3"}
    assert config.may_decide("deploy_frontend") == {"U1", "S2"}
    assert config.approval_channel == "C9"
