"""How an agent is defined: data plus async tool handlers (factors 4, 7, 10).

    class ListGitTags(Action):
        '''List the repository's git tags.'''
        intent: Literal["list_git_tags"] = "list_git_tags"

    agent = Agent(name="deploybot", prompt="prompts/deploybot.j2",
                  tools=[Tool(ListGitTags, list_git_tags)])

The engine adds ``request_more_information`` and ``done_for_now`` to every agent's union.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar, Union

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import ConfigError


class Action(BaseModel):
    """Base of every action the model may choose; subclasses set a Literal ``intent``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    intent: str


class RequestMoreInformation(Action):
    """Ask the human a question when the request is unclear or something is missing."""

    intent: Literal["request_more_information"] = "request_more_information"
    message: str = Field(description="the question for the human")


class DoneForNow(Action):
    """Finish this turn with a message for the human (a result, or a summary)."""

    intent: Literal["done_for_now"] = "done_for_now"
    message: str = Field(description="what to tell the human")


S = TypeVar("S", bound=BaseSettings)


def read_settings(cls: type[S]) -> S:
    """An agent's settings from the environment; a bad value stops start-up, named."""
    try:
        return cls()
    except ValidationError as exc:
        first = exc.errors()[0]
        prefix = str(cls.model_config.get("env_prefix", ""))
        raise ConfigError(f"{prefix}{str(first['loc'][0]).upper()}", first["msg"]) from None


@dataclass(frozen=True)
class Requester:
    """Who started the thread, as the channel proved it: ``channel`` and ``id`` (a Slack user
    ID, an email address, an API token's name); ``verified``: the channel authenticated them
    (an email that passed DKIM/DMARC at our receiving server, Slack's signature)."""

    channel: str
    id: str | None
    verified: bool


@dataclass(frozen=True)
class ToolContext:
    """What a handler may use. Resources come from the app's lifespan, never globals.

    ``idempotency_key`` names this call (thread and action seq): the same key every time the
    call is run, so a receiver that honours it applies the effect once. ``approval`` is the
    decision's evidence when a person approved this very call, else None."""

    thread_id: str
    http: httpx.AsyncClient
    db: AsyncEngine  # the service's database, for agents with tables of their own
    idempotency_key: str = ""
    requester: Requester | None = None
    approval: Mapping[str, Any] | None = None


ToolResultValue = str | Mapping[str, Any] | list[Any]
Handler = Callable[[Any, ToolContext], Awaitable[ToolResultValue]]
# Whether a call needs approval, given what the tool can look up (an order's refunds so far)
Gate = Callable[[Any, ToolContext], Awaitable[bool]]


@dataclass(frozen=True)
class Tool:
    model: type[Action]
    handler: Handler
    # True, or a predicate on the call (a refund above a threshold, say).
    needs_approval: bool | Callable[[Any], bool] = False
    # A non-idempotent tool interrupted by a crash is not silently re-run.
    idempotent: bool = True
    # A check that needs I/O (the sum of a thread's refunds, say), on top of needs_approval.
    approval_gate: Gate | None = None

    def approval_needed(self, action: Mapping[str, Any]) -> bool:
        """The pure part of the gate: what ``needs_approval`` says about the call."""
        if callable(self.needs_approval):
            return bool(self.needs_approval(self.model.model_validate(dict(action))))
        return self.needs_approval

    @property
    def gated(self) -> bool:
        """Whether any call of this tool may need approval."""
        return self.approval_gate is not None or self.needs_approval is not False

    async def gate(self, action: Mapping[str, Any], ctx: ToolContext) -> bool:
        """Whether this call needs approval: the predicate, then the I/O check."""
        if self.approval_needed(action):
            return True
        if self.approval_gate is None:
            return False
        return await self.approval_gate(self.model.model_validate(dict(action)), ctx)

    @property
    def intent(self) -> str:
        default = self.model.model_fields["intent"].default
        assert isinstance(default, str), f"{self.model.__name__}.intent needs a Literal default"
        return default


@dataclass(frozen=True)
class TimerPolicy:
    """What happens while a person does not answer one kind of request (durable timers)."""

    remind_after: timedelta | None = None  # contact the same person again
    escalate_after: timedelta | None = None  # contact the escalation contact
    timeout_after: timedelta | None = None  # give up: reject (approvals) or note no answer

    def __post_init__(self) -> None:
        steps = [t for t in (self.remind_after, self.escalate_after, self.timeout_after) if t]
        if steps != sorted(steps) or any(t <= timedelta(0) for t in steps):
            raise ValueError("timers must be positive and in order: remind, escalate, time out")


TimerKind = Literal["approval", "response"]

HUMAN_ACTIONS: tuple[type[Action], ...] = (RequestMoreInformation, DoneForNow)


@dataclass(frozen=True)
class Agent:
    name: str
    prompt: str
    tools: tuple[Tool, ...]
    description: str = ""
    step_cap: int | None = None
    prompt_vars: Mapping[str, Any] = field(default_factory=dict)
    timers: Mapping[TimerKind, TimerPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        intents = [t.intent for t in self.tools]
        reserved = {m.model_fields["intent"].default for m in HUMAN_ACTIONS}
        clash = (set(intents) & reserved) or {i for i in intents if intents.count(i) > 1}
        if clash:
            raise ValueError(f"agent {self.name}: duplicate or reserved intents {sorted(clash)}")

    @cached_property
    def tools_by_intent(self) -> dict[str, Tool]:
        return {t.intent: t for t in self.tools}

    @cached_property
    def action_models(self) -> tuple[type[Action], ...]:
        return (*(t.model for t in self.tools), *HUMAN_ACTIONS)

    @cached_property
    def action_adapter(self) -> TypeAdapter[Action]:
        union: Any = Union[self.action_models]  # noqa: UP007
        return TypeAdapter(Annotated[union, Field(discriminator="intent")])

    def parse_action(self, data: Mapping[str, Any]) -> Action:
        return self.action_adapter.validate_python(dict(data))
