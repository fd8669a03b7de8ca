"""Who may decide an agent's gated calls: the approval policy, checked in one place.

A channel proves *who* a person is (Slack's signature and user ID, an email's signed token
and its sender's DKIM/DMARC verdict, an API token's name) and hands the core a
:class:`Principal`. Whether that principal may decide a given call is the policy's answer,
the same for every channel, in :func:`refusal`.

A policy lists principals as ``channel:id``: ``slack:U012ABC`` (a user), ``slack:S0OPS`` (a
user group: the Slack channel resolves membership), ``email:ops@example.com``,
``api:deploy-console`` (an API token's name). An empty list is an *open* policy: anyone who
can reach a channel that shows the request may decide (a development set-up; the service
warns at start). ``four_eyes``: the person whose message led to the request may not decide it.

Configured per agent, and per tool, from the environment (read once at start-up):
``<AGENT>_SLACK_APPROVERS``, ``<AGENT>_EMAIL_APPROVERS``, ``<AGENT>_API_APPROVERS``,
``<AGENT>_FOUR_EYES`` and the same with ``<AGENT>_<TOOL>_`` for one tool (a tool's list
replaces the agent's for that channel).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import ConfigError

CHANNELS = ("slack", "email", "api")


@dataclass(frozen=True)
class Principal:
    """A person (or token) as a channel proved them: ``channel`` and ``id`` name them;
    ``via`` says how it was proven; ``details`` keeps the evidence (an email's DMARC verdict,
    the Slack message a button was on); ``groups`` the policy's groups they belong to, as the
    channel resolved them."""

    channel: str
    id: str
    via: str
    details: Mapping[str, Any] = field(default_factory=dict)
    groups: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.id}"

    def in_groups(self, groups: Iterable[str]) -> Principal:
        return replace(self, groups=self.groups | frozenset(groups))

    def evidence(self, digest: str | None) -> dict[str, Any]:
        """What a decision event records about who made it and how that was proven."""
        found: dict[str, Any] = {"principal": self.key, "via": self.via}
        if self.details:
            found["details"] = dict(self.details)
        if self.groups:
            found["groups"] = sorted(self.groups)
        if digest is not None:
            found["digest"] = digest
        return found


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who may decide one tool's calls. ``approvers`` holds ``channel:id`` entries."""

    approvers: frozenset[str] = frozenset()
    four_eyes: bool = False

    @property
    def open(self) -> bool:
        return not self.approvers

    def ids(self, channel: str) -> frozenset[str]:
        """The ids this policy names for one channel (Slack users and groups, addresses…)."""
        prefix = f"{channel}:"
        return frozenset(a[len(prefix) :] for a in self.approvers if a.startswith(prefix))

    def slack_groups(self) -> frozenset[str]:
        return frozenset(i for i in self.ids("slack") if i.startswith("S"))

    def allows(self, principal: Principal) -> bool:
        if self.open:
            return True
        if principal.key in self.approvers:
            return True
        return any(f"{principal.channel}:{g}" in self.approvers for g in principal.groups)


def refusal(
    policy: ApprovalPolicy,
    principal: Principal,
    requesters: Collection[str],
    *,
    cancel: bool = False,
) -> str | None:
    """Why ``principal`` may not decide (or, with ``cancel``, cancel) a request; None if they
    may. ``requesters``: who asked for it (everyone who wrote in the task that led to it); they
    may always cancel it, and never approve it under four-eyes."""
    if cancel and principal.key in requesters:
        return None
    if principal.channel == "link":
        return _link_refusal(policy, principal, requesters)
    if not policy.allows(principal):
        return f"{principal.key} may not decide this request"
    if policy.four_eyes and principal.key in requesters and not cancel:
        return "four-eyes: the person who asked may not approve their own request"
    return None


def _link_refusal(
    policy: ApprovalPolicy, principal: Principal, requesters: Collection[str]
) -> str | None:
    """A signed link proves only that its holder got the mail it was in: it decides if
    everyone that mail went to may decide (and, under four-eyes, none of them asked)."""
    sent_to = [str(a) for a in principal.details.get("sent_to") or ()]
    if policy.open:
        return None
    if not sent_to or not all(policy.allows(Principal("email", a, "link")) for a in sent_to):
        return "this link was sent to someone who may not decide this request"
    if policy.four_eyes and {f"email:{a}" for a in sent_to} & set(requesters):
        return "four-eyes: the link went to the person who asked"
    return None


@dataclass(frozen=True)
class Policies:
    """The approval policy of every agent and tool, as configured."""

    agents: Mapping[str, ApprovalPolicy] = field(default_factory=dict)
    tools: Mapping[tuple[str, str], ApprovalPolicy] = field(default_factory=dict)

    def for_call(self, agent: str, intent: str) -> ApprovalPolicy:
        return self.tools.get((agent, intent)) or self.agents.get(agent) or ApprovalPolicy()

    def everyone(self, agent: str, channel: str) -> frozenset[str]:
        """Every id named for ``channel`` by the agent's policy or any of its tools'."""
        found = set(self.agents.get(agent, ApprovalPolicy()).ids(channel))
        for (name, _), policy in self.tools.items():
            if name == agent:
                found |= policy.ids(channel)
        return frozenset(found)

    def with_api_approvers(self, grants: Mapping[str, Iterable[str]]) -> Policies:
        """Add API tokens allowed to decide for an agent (their ``approve:<agent>`` scope):
        ``grants`` maps agent -> token names. A grant makes an open policy a listed one: from
        then on only the principals listed decide, whatever the channel."""
        agents = dict(self.agents)
        for agent, names in grants.items():
            extra = {f"api:{n}" for n in names}
            base = agents.get(agent, ApprovalPolicy())
            agents[agent] = replace(base, approvers=base.approvers | extra)
        tools = {
            key: replace(p, approvers=p.approvers | {f"api:{n}" for n in grants.get(key[0], ())})
            for key, p in self.tools.items()
        }
        return Policies(agents, tools)


def _env_name(*parts: str) -> str:
    return "_".join(p.upper().replace("-", "_") for p in parts)


def _listed(channel: str, value: str | None, variable: str) -> frozenset[str] | None:
    if value is None or not value.strip():
        return None
    ids = [v.strip() for v in value.split(",") if v.strip()]
    for one in ids:
        if channel == "email" and "@" not in one:
            raise ConfigError(variable, f"{one!r} is not an email address")
        if channel == "slack" and one[:1] not in ("U", "W", "S"):
            raise ConfigError(variable, f"{one!r} is not a Slack user (U…/W…) or group (S…) ID")
    if channel == "email":
        ids = [i.lower() for i in ids]
    return frozenset(f"{channel}:{i}" for i in ids)


def _flag(value: str | None, variable: str) -> bool | None:
    if value is None or not value.strip():
        return None
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(variable, f"{value!r} is not true or false")


def _policy(
    environ: Mapping[str, str], prefix: tuple[str, ...], base: ApprovalPolicy | None
) -> ApprovalPolicy | None:
    """The policy the variables under ``prefix`` set, on top of ``base``; None if none is set."""
    lists: dict[str, frozenset[str]] = {}
    for channel in CHANNELS:
        variable = _env_name(*prefix, channel, "APPROVERS")
        found = _listed(channel, environ.get(variable), variable)
        if found is not None:
            lists[channel] = found
    variable = _env_name(*prefix, "FOUR_EYES")
    four_eyes = _flag(environ.get(variable), variable)
    if not lists and four_eyes is None:
        return None
    start = base or ApprovalPolicy()
    approvers = {a for a in start.approvers if a.partition(":")[0] not in lists}
    for found in lists.values():
        approvers |= found
    return ApprovalPolicy(frozenset(approvers), start.four_eyes if four_eyes is None else four_eyes)


def read_policies(
    agents: Iterable[tuple[str, Iterable[str]]], environ: Mapping[str, str] = os.environ
) -> Policies:
    """Each agent's policy, and each tool's where it differs. ``agents``: (name, intents)."""
    agent_policies: dict[str, ApprovalPolicy] = {}
    tool_policies: dict[tuple[str, str], ApprovalPolicy] = {}
    for name, intents in agents:
        base = _policy(environ, (name,), None)
        if base is not None:
            agent_policies[name] = base
        for intent in intents:
            tool = _policy(environ, (name, intent), base)
            if tool is not None:
                tool_policies[(name, intent)] = tool
    return Policies(agent_policies, tool_policies)
