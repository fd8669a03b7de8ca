"""deploybot: the 12-factor guide's example. Lists tags, deploys a tag after a human approves.

Settings: ``DEPLOYBOT_REPO`` (the git repository whose tags are listed; default: the working
directory) and ``DEPLOYBOT_WEBHOOK_URL`` (receives ``{"service", "tag", "thread_id"}``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Literal

import httpx
from pydantic import AnyHttpUrl, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.agent import Action, Agent, TimerPolicy, Tool, ToolContext, read_settings
from app.errors import ToolError, ToolOutcomeUnknown


class DeploybotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEPLOYBOT_", extra="ignore", frozen=True)

    repo: Path = Path(".")
    webhook_url: AnyHttpUrl | None = None
    webhook_timeout: float = Field(default=30.0, gt=0)
    # While an approval is pending: remind, escalate, then reject ("no answer within 24 h").
    # Seconds, or ISO 8601 durations (PT4H). Zero turns a step off.
    approval_remind_after: timedelta = timedelta(hours=1)
    approval_escalate_after: timedelta = timedelta(hours=4)
    approval_timeout_after: timedelta = timedelta(hours=24)
    question_remind_after: timedelta = timedelta(hours=24)


class ListGitTags(Action):
    """List the git tags of the repository, highest version first."""

    intent: Literal["list_git_tags"] = "list_git_tags"


class DeployBackend(Action):
    """Deploy the backend at a git tag. A human must approve it first."""

    intent: Literal["deploy_backend"] = "deploy_backend"
    tag: str = Field(description="the git tag to deploy")


class DeployFrontend(Action):
    """Deploy the frontend at a git tag. A human must approve it first."""

    intent: Literal["deploy_frontend"] = "deploy_frontend"
    tag: str = Field(description="the git tag to deploy")


async def list_git_tags(repo: Path) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        "git",
        "-C",
        str(repo),
        "tag",
        "--list",
        "--sort=-v:refname",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ToolError(f"git tag failed: {err.decode(errors='replace').strip()[:200]}")
    return [line for line in out.decode().splitlines() if line]


async def post_deploy(
    settings: DeploybotSettings, ctx: ToolContext, service: str, tag: str
) -> dict[str, object]:
    if settings.webhook_url is None:
        raise ToolError("deploys are not configured: DEPLOYBOT_WEBHOOK_URL is not set")
    body = {"service": service, "tag": tag, "thread_id": ctx.thread_id}
    try:
        response = await ctx.http.post(
            str(settings.webhook_url), json=body, timeout=settings.webhook_timeout
        )
    except httpx.ConnectError as exc:  # nothing was sent: the deploy did not start
        raise ToolError(f"deploy webhook unreachable: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:  # sent, but no answer: it may have started
        raise ToolOutcomeUnknown(
            f"no answer from the deploy webhook ({type(exc).__name__})"
        ) from exc
    if not response.is_success:
        raise ToolError(f"deploy webhook answered {response.status_code}: {response.text[:200]}")
    return {"deployed": service, "tag": tag, "status": response.status_code}


def build(settings: DeploybotSettings | None = None) -> Agent:
    cfg = settings or read_settings(DeploybotSettings)

    async def _tags(_: ListGitTags, ctx: ToolContext) -> list[str]:
        return await list_git_tags(cfg.repo)

    async def _backend(call: DeployBackend, ctx: ToolContext) -> dict[str, object]:
        return await post_deploy(cfg, ctx, "backend", call.tag)

    async def _frontend(call: DeployFrontend, ctx: ToolContext) -> dict[str, object]:
        return await post_deploy(cfg, ctx, "frontend", call.tag)

    return Agent(
        name="deploybot",
        prompt="prompts/deploybot.j2",
        description="Deploys tagged releases of the backend and frontend, with approval.",
        tools=(
            Tool(ListGitTags, _tags),
            Tool(DeployBackend, _backend, needs_approval=True, idempotent=False),
            Tool(DeployFrontend, _frontend, needs_approval=True, idempotent=False),
        ),
        timers={
            "approval": TimerPolicy(
                remind_after=cfg.approval_remind_after or None,
                escalate_after=cfg.approval_escalate_after or None,
                timeout_after=cfg.approval_timeout_after or None,
            ),
            "response": TimerPolicy(remind_after=cfg.question_remind_after or None),
        },
    )
