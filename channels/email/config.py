"""``<AGENT>_EMAIL_APPROVERS``: the addresses that may decide an agent's approvals by email
(approval requests of its threads that started by email or through the API go to them)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from app.agent import Agent


def read_email_approvers(
    agents: Iterable[Agent], environ: Mapping[str, str] = os.environ
) -> dict[str, list[str]]:
    found = {}
    for agent in agents:
        value = environ.get(f"{agent.name.upper().replace('-', '_')}_EMAIL_APPROVERS", "")
        addresses = [a.strip().lower() for a in value.split(",") if "@" in a]
        if addresses:
            found[agent.name] = addresses
    return found
