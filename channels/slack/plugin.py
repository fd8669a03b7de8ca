"""Slack as a relaybot channel: registered under the ``relaybot.channels`` entry point.

On when ``SLACK_BOT_TOKEN`` and ``SLACK_SIGNING_SECRET`` are set. It answers in Slack threads,
carries the approval traffic of each agent with ``<AGENT>_SLACK_APPROVAL_CHANNEL``, proves
membership of Slack user groups for the policy, and serves ``POST /slack/events`` (or, with
``serve --socket-mode``, connects to Slack instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from fastapi import FastAPI
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.channel import Channel, ChannelContext, channel_state
from app.errors import ConfigError
from channels.slack.config import read_agent_configs
from channels.slack.inbound import SlackInbound, build_app
from channels.slack.outbound import SlackSender


@dataclass(frozen=True)
class SlackState:
    inbound: SlackInbound
    bolt: AsyncApp
    handler: AsyncSlackRequestHandler


class SlackPlugin:
    name = "slack"

    def routes(self, app: FastAPI) -> None:
        # A plain Starlette route: the webhook needs no validation or injection from
        # FastAPI, and Slack's traffic is where the time per request counts.
        app.router.routes.append(Route("/slack/events", _events, methods=["POST"]))

    def build(self, ctx: ChannelContext) -> Channel | None:
        s = ctx.settings
        if not s.slack_enabled:
            return None
        assert s.slack_signing_secret and s.slack_bot_token
        if ctx.socket_mode and not s.slack_app_token:
            raise ConfigError("SLACK_APP_TOKEN", "Socket Mode needs it (an xapp- token)")
        client = AsyncWebClient(
            token=s.slack_bot_token,
            base_url=s.slack_api_url,
            session=aiohttp.ClientSession(),  # one connection pool, not one per call
        )
        configs = read_agent_configs(ctx.agents.values())
        inbound = SlackInbound(
            ctx.threads,
            client,
            configs,
            s.channel_agents,
            signing_secret=s.slack_signing_secret,
            outbox=ctx.outbox,
        )
        bolt = build_app(inbound, client, s.slack_signing_secret)

        @contextlib.asynccontextmanager
        async def socket() -> AsyncIterator[None]:
            handler = AsyncSocketModeHandler(bolt, s.slack_app_token)
            await handler.connect_async()  # type: ignore[no-untyped-call]
            try:
                yield
            finally:
                await handler.close_async()  # type: ignore[no-untyped-call]

        async def close() -> None:
            if client.session is not None:
                await client.session.close()

        return Channel(
            name="slack",
            sender=SlackSender(client, ctx.outbox, configs, ctx.policies),
            answers=("slack",),
            approvals_for=[n for n, c in configs.items() if c.approval_channel],
            groups=inbound.member_of,
            state=SlackState(inbound, bolt, AsyncSlackRequestHandler(bolt)),
            connection=socket if ctx.socket_mode else None,
            close=close,
            connects_out=ctx.socket_mode,
        )


async def _events(request: Request) -> Response:
    state: SlackState | None = channel_state(request, "slack")
    if state is None:
        return JSONResponse({"detail": "Slack is not configured"}, status_code=404)
    if request.headers.get("content-type", "").startswith("application/json"):
        # The Events API: mentions and messages, most of the traffic, on a direct path.
        status, answer = await state.inbound.events_api(await request.body(), request.headers)
        if answer is None:
            return Response(status_code=status)
        return JSONResponse(answer, status_code=status)
    return await state.handler.handle(request)  # buttons, the modal, the slash command


plugin = SlackPlugin()
