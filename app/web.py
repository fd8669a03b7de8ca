"""The process: everything built from Settings in one place (no globals).

``runtime`` makes the store, HTTP client, engine, contacts, and (unless turned off) the
worker, the dispatcher and, on Postgres, the LISTEN connection that wakes them. ``serve``
mounts it under the web app; ``relaybot worker`` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from aiohttp import web
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.agent import Agent
from app.channel import Channel, ChannelContext
from app.contacts import Contacts
from app.context import ContextRenderer, make_environment
from app.dispatch import Dispatcher
from app.engine import Engine, EngineConfig
from app.errors import ConfigError
from app.llm import LLM, LiteLLM
from app.metrics import CONTENT_TYPE_LATEST, HTTP_SECONDS, exposition
from app.notify import PgListener, asyncpg_dsn
from app.plugins import CHANNELS, load_agents, load_object, plugins
from app.policy import Policies, read_policies
from app.service import Threads
from app.settings import Settings
from app.store import Store
from app.store.outbox import Outbox
from app.store.store import ANSWERED, OUTBOX, RUNNABLE
from app.tokens import ApiTokens, read_tokens
from app.worker import Worker

log = logging.getLogger(__name__)


class RequestMetrics:
    """Times every request by its route's template (``/thread/{thread_id}``, not the id)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.routes = routes  # the app's, to name plain Starlette routes (see below)

    def _template_of(self, scope: Scope) -> str:
        """FastAPI's router names only its own routes in the scope; a plain Starlette route
        (the Slack webhook's) is found by the endpoint it put there."""
        endpoint = scope.get("endpoint")
        for route in self.routes:
            if endpoint is not None and getattr(route, "endpoint", None) is endpoint:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = getattr(scope.get("route"), "path", None) or self._template_of(scope)
            HTTP_SECONDS.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )


@dataclass
class Runtime:
    """Everything the process holds while it runs."""

    settings: Settings
    store: Store
    outbox: Outbox
    http: httpx.AsyncClient
    engine: Engine
    threads: Threads
    api_tokens: ApiTokens
    channels: dict[str, Channel] = field(default_factory=dict)
    worker: Worker | None = None
    dispatcher: Dispatcher | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def build_agents(settings: Settings) -> dict[str, Agent]:
    agents = load_agents(settings.extra_agents)
    if settings.default_agent not in agents:
        known = ", ".join(agents)
        raise ConfigError("DEFAULT_AGENT", f"no agent {settings.default_agent!r} ({known})")
    return agents


def build_llm(settings: Settings) -> LLM:
    if settings.llm_factory:
        llm: LLM = load_object("LLM_FACTORY", settings.llm_factory)(settings)
        return llm
    return LiteLLM(settings.llm_model, api_base=settings.llm_api_base, timeout=settings.llm_timeout)


def _warn_open_policies(agents: Mapping[str, Agent], policies: Policies) -> None:
    for agent in agents.values():
        for tool in agent.tools:
            if tool.gated and policies.for_call(agent.name, tool.intent).open:
                log.warning(
                    "%s.%s: no approvers are configured, so anyone who sees a request may "
                    "decide it: set %s_SLACK_APPROVERS, _EMAIL_APPROVERS or _API_APPROVERS",
                    agent.name,
                    tool.intent,
                    agent.name.upper().replace("-", "_"),
                )


def build_channels(ctx: ChannelContext, contacts: Contacts) -> dict[str, Channel]:
    """Every channel plugin that its settings turn on, and the routes from the core's
    contacts to them: a thread channel to the channel that answers it, an agent's approval
    traffic to every channel that carries it."""
    built: dict[str, Channel] = {}
    for name, plugin in plugins(CHANNELS):
        channel = plugin.build(ctx)
        if channel is None:
            continue
        built[channel.name] = channel
        for thread_channel in channel.answers:
            contacts.routes[thread_channel] = channel.name
        for agent in channel.approvals_for:
            contacts.approval_routes.setdefault(agent, []).append(channel.name)
        if channel.groups is not None:
            ctx.threads.groups[channel.name] = channel.groups
        log.debug("channel %s (plugin %s) is on", channel.name, name)
    if ctx.socket_mode and not any(c.connects_out for c in built.values()):
        raise ConfigError(
            "SLACK_APP_TOKEN", "Socket Mode needs it, with SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET"
        )
    return built


@contextlib.asynccontextmanager
async def runtime(
    settings: Settings,
    *,
    llm: LLM | None = None,
    agents: Mapping[str, Agent] | None = None,
    with_worker: bool = True,
    engine_config: EngineConfig | None = None,
    socket_mode: bool = False,
) -> AsyncIterator[Runtime]:
    agents = agents if agents is not None else build_agents(settings)
    store = Store.from_url(settings.database_url)
    outbox = Outbox(store.engine)
    http = httpx.AsyncClient(timeout=30.0)
    llm = llm or build_llm(settings)
    env = make_environment()
    renderer = ContextRenderer(env, settings.llm_model, settings.context_token_budget)
    tokens = read_tokens(settings.api_token, settings.api_tokens)
    policies = read_policies((a.name, [t.intent for t in a.tools]) for a in agents.values())
    policies = policies.with_api_approvers(tokens.approvers(agents))
    _warn_open_policies(agents, policies)
    contacts = Contacts({}, settings.base_url, {}, policies)
    engine_config = engine_config or EngineConfig(
        step_cap=settings.step_cap,
        tool_timeout=settings.tool_timeout,
        retry_backoff=settings.llm_retry_backoff,
    )
    engine = Engine(store, agents, llm, renderer, http, engine_config, contacts)
    threads = Threads(
        store,
        agents,
        default_agent=settings.default_agent,
        base_url=settings.base_url,
        contacts=contacts,
        policies=policies,
    )
    ctx = ChannelContext(settings, agents, policies, store, outbox, http, env, threads, socket_mode)
    rt = Runtime(settings, store, outbox, http, engine, threads, tokens)
    try:
        rt.channels = build_channels(ctx, contacts)
        if with_worker:
            lease = timedelta(seconds=settings.worker_lease)
            rt.worker = Worker(
                store,
                engine,
                concurrency=settings.worker_concurrency,
                lease=lease,
                poll_interval=settings.poll_interval,
            )
            senders = {n: c.sender for n, c in rt.channels.items() if c.sender is not None}
            rt.dispatcher = Dispatcher(
                outbox,
                senders,
                max_attempts=settings.outbox_max_attempts,
                poll_interval=settings.poll_interval,
            )
            wakers = {
                RUNNABLE: rt.worker.wake,
                ANSWERED: rt.worker.answered,
                OUTBOX: rt.dispatcher.wake,
            }
            store.on_commit.append(lambda topic: wakers[topic]())
            rt.tasks.append(asyncio.create_task(rt.worker.run(), name="worker"))
            rt.tasks.append(asyncio.create_task(rt.dispatcher.run(), name="dispatcher"))
            if store.is_postgres:
                listener = PgListener(asyncpg_dsn(settings.database_url), wakers)
                rt.tasks.append(asyncio.create_task(listener.run(), name="listen"))
            for channel in rt.channels.values():
                for loop in channel.background:
                    rt.tasks.append(asyncio.create_task(loop(), name=channel.name))
        rt.tasks.append(asyncio.create_task(_fill_pool(store), name="fill-pool"))
        async with contextlib.AsyncExitStack() as connections:
            for channel in rt.channels.values():
                if channel.connection is not None:
                    await connections.enter_async_context(channel.connection())
            yield rt
    finally:
        await shutdown(rt)


async def _fill_pool(store: Store) -> None:
    try:
        await store.fill_pool()
    except Exception as exc:  # the database may be down at start: readiness says so
        log.warning("could not open the database pool at start: %s", exc)


async def shutdown(rt: Runtime) -> None:
    """Finish or release the current steps within the grace period, then close everything."""
    grace = rt.settings.shutdown_grace
    stops = [loop.stop(grace) for loop in (rt.worker, rt.dispatcher) if loop is not None]
    await asyncio.gather(*stops)
    for task in rt.tasks:
        task.cancel()
    for task in rt.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await rt.http.aclose()
    for channel in rt.channels.values():
        if channel.close is not None:
            await channel.close()
    await rt.store.close()


async def readiness(rt: Runtime) -> tuple[bool, dict[str, str]]:
    try:
        async with asyncio.timeout(3):
            await rt.store.ping()
    except Exception as exc:
        log.warning("readyz: database unreachable: %s", exc)
        reason = f"database unreachable: {type(exc).__name__}"
        return False, {"status": "unavailable", "detail": reason}
    return True, {"status": "ready"}


@contextlib.asynccontextmanager
async def ops_server(rt: Runtime, host: str, port: int) -> AsyncIterator[None]:
    """/healthz, /readyz and /metrics for a process without the web app (``relaybot worker
    --port``): the image's HEALTHCHECK works, and Prometheus sees the worker's steps."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, body = await readiness(rt)
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = await exposition(rt.store)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("worker: /healthz, /readyz and /metrics on http://%s:%d", host, port)
    try:
        yield
    finally:
        await runner.cleanup()


def app_from_env() -> FastAPI:
    """The app of one of ``serve``'s processes when WEB_CONCURRENCY > 1 (uvicorn starts each
    with this factory): settings from the environment, as the parent read them."""
    from app.logs import configure
    from app.settings import load_settings

    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    return create_app(settings, with_worker=os.environ.get(SERVE_WORKER, "1") == "1")


SERVE_WORKER = "RELAYBOT_SERVE_WORKER"  # serve --no-worker, told to its processes


def create_app(
    settings: Settings,
    *,
    llm: LLM | None = None,
    agents: Mapping[str, Agent] | None = None,
    with_worker: bool = True,
    socket_mode: bool = False,
) -> FastAPI:
    if socket_mode and not (settings.slack_enabled and settings.slack_app_token):
        raise ConfigError(
            "SLACK_APP_TOKEN", "Socket Mode needs it, with SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime(
            settings, llm=llm, agents=agents, with_worker=with_worker, socket_mode=socket_mode
        ) as rt:
            app.state.runtime = rt
            app.state.threads = rt.threads
            app.state.api_tokens = rt.api_tokens
            app.state.channels = rt.channels
            # What start-up made (modules, schemas, templates) lives as long as the process:
            # keep it out of the collector's sight, so that a full collection does not walk
            # it and stall every request in flight (hundreds of ms with litellm imported).
            gc.collect()
            gc.freeze()
            yield

    app = FastAPI(
        title="relaybot",
        version="0.1.0",
        description="Human-in-the-loop agents: launch a thread, read it, answer it.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.api_tokens = read_tokens(settings.api_token, settings.api_tokens)
    app.state.channels = {}
    app.add_middleware(RequestMetrics, routes=app.router.routes)
    for _, plugin in plugins(CHANNELS):
        plugin.routes(app)

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        """Ready when the database answers (the load balancer's check; /healthz: alive)."""
        ready, body = await readiness(request.app.state.runtime)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        rt: Runtime = request.app.state.runtime
        return Response(await exposition(rt.store), media_type=CONTENT_TYPE_LATEST)

    return app
