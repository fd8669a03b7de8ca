"""The ``relaybot`` command: run the service and workers, migrate, and look after threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer

from app.errors import ConfigError, RelaybotError
from app.service import Threads
from app.settings import Settings, load_settings
from app.store import Store
from app.store.outbox import Outbox

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
threads_cli = typer.Typer(no_args_is_help=True, help="Inspect, retry and fork threads.")
cli.add_typer(threads_cli, name="threads")

T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        typer.echo(f"relaybot: configuration error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def _store_settings() -> Settings:
    # Looking at threads needs the database only: a model need not be configured.
    return _settings(llm_model="-") if "LLM_MODEL" not in _env() else _settings()


def _env() -> set[str]:
    return {k.upper() for k in os.environ}


def _with_store(work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured database, do ``work``, close it; errors as one line."""
    settings = _store_settings()

    async def go() -> T:
        store = Store.from_url(settings.database_url)
        try:
            return await work(store)
        finally:
            await store.close()

    return _run(go)


def _run(coro: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(coro())  # type: ignore[arg-type]
    except RelaybotError as exc:
        typer.echo(f"relaybot: {exc.message}", err=True)
        raise typer.Exit(1) from None


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="overrides HOST")] = None,
    port: Annotated[int | None, typer.Option(help="overrides PORT")] = None,
    migrate: Annotated[bool, typer.Option(help="run migrations first")] = True,
    worker: Annotated[
        bool, typer.Option(help="step threads and send messages in this process too")
    ] = True,
    socket_mode: Annotated[
        bool, typer.Option(help="connect to Slack over Socket Mode (local development)")
    ] = False,
) -> None:
    """Run the web service (with an in-process worker unless --no-worker)."""
    import uvicorn

    from app.store.migrate import upgrade
    from app.web import SERVE_WORKER, create_app

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = _settings(**overrides)
    _logging(settings)
    _check_agents(settings)
    if migrate:
        upgrade(settings.database_url)
    log = logging.getLogger("relaybot")
    if not settings.api_token:
        log.warning("API_TOKEN is not set, so the API is open: listening on 127.0.0.1 only.")
    if settings.log_format == "json":
        log.info("serving on http://%s:%s", settings.bind_host, settings.port)
    else:  # the banner a person at a terminal looks for, whatever the log level
        typer.echo(f"relaybot: serving on http://{settings.bind_host}:{settings.port}", err=True)
    if settings.web_concurrency > 1:
        if socket_mode:
            typer.echo("relaybot: Socket Mode takes one process: unset WEB_CONCURRENCY", err=True)
            raise typer.Exit(2)
        # Each process builds its own app (and worker) from the same environment.
        os.environ.update({"HOST": settings.host, "PORT": str(settings.port)})
        os.environ[SERVE_WORKER] = "1" if worker else "0"
        uvicorn.run(
            "app.web:app_from_env",
            factory=True,
            workers=settings.web_concurrency,
            host=settings.bind_host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            log_config=None,
            proxy_headers=True,
        )
        return
    try:
        app = create_app(settings, with_worker=worker, socket_mode=socket_mode)
    except ConfigError as exc:
        typer.echo(f"relaybot: configuration error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(
        app,
        host=settings.bind_host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # ours, set by _logging: JSON lines when LOG_FORMAT=json
        proxy_headers=True,
    )


@cli.command("worker")
def worker_command(
    migrate: Annotated[bool, typer.Option(help="run migrations first")] = False,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="serve /healthz, /readyz and /metrics on this port"),
    ] = None,
) -> None:
    """Step threads and send outbound messages, without the web service.

    Run as many as you like against one Postgres. SIGTERM finishes or releases the
    current steps within SHUTDOWN_GRACE seconds, then exits."""
    import signal

    from app.store.migrate import upgrade
    from app.web import ops_server, runtime

    settings = _settings()
    _logging(settings)
    _check_agents(settings)
    if migrate:
        upgrade(settings.database_url)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with runtime(settings, with_worker=True) as rt:
            async with contextlib.AsyncExitStack() as stack:
                if port is not None:
                    await stack.enter_async_context(ops_server(rt, settings.bind_host, port))
                await stop.wait()
            logging.getLogger("relaybot").info("stopping: finishing current steps")

    _event_loop_run(go())


def _event_loop_run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (as uvicorn does for ``serve``)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _logging(settings: Settings) -> None:
    from app.logs import configure

    configure(settings.log_level, settings.log_format)


def _check_agents(settings: Settings) -> None:
    from app.web import build_agents

    try:
        build_agents(settings)
    except ConfigError as exc:
        typer.echo(f"relaybot: configuration error: {exc.message}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from app.store.migrate import upgrade

    settings = _store_settings()
    upgrade(settings.database_url)
    typer.echo("relaybot: database is up to date")


@threads_cli.command("list")
def threads_list(
    status: Annotated[str | None, typer.Option(help="only threads with this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """List threads, most recently active first."""

    async def go(store: Store) -> None:
        rows = await store.list_threads(status=status, limit=limit)
        typer.echo(f"{'THREAD':36}  {'AGENT':12}  {'STATUS':18}  {'EVENTS':>6}  UPDATED")
        for r in rows:
            updated = r.updated_at.strftime("%Y-%m-%d %H:%M:%S")
            typer.echo(f"{r.id:36}  {r.agent:12}  {r.status:18}  {r.version:>6}  {updated}")

    _with_store(go)


@threads_cli.command("show")
def threads_show(thread_id: str) -> None:
    """Print a thread's timeline, with each model call's tokens and latency."""
    from app.timeline import format_timeline

    async def go(store: Store) -> None:
        record = await store.load(thread_id)
        rows = await Outbox(store.engine).list(thread_id=thread_id)
        typer.echo(format_timeline(record, rows))

    _with_store(go)


def _threads(store: Store) -> Threads:
    from app.plugins import load_agents

    settings = _store_settings()
    try:
        agents = load_agents(settings.extra_agents)
    except ConfigError as exc:
        typer.echo(f"relaybot: configuration error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    return Threads(store, agents, default_agent=settings.default_agent, base_url=settings.base_url)


@threads_cli.command("retry")
def threads_retry(
    thread_id: str,
    author: Annotated[str, typer.Option(help="who asks, as the thread will show it")] = "operator",
) -> None:
    """Run a thread's failed step again (after errors, or an escalation about them)."""

    async def go(store: Store) -> dict[str, Any]:
        return await _threads(store).retry(thread_id, author=author)

    answer = _with_store(go)
    typer.echo(f"relaybot: thread {thread_id} will retry (seq {answer['seq']})")


@threads_cli.command("fork")
def threads_fork(
    thread_id: str,
    at: Annotated[int, typer.Option("--at", min=1, help="copy events 1 to this seq")],
    agent: Annotated[
        str | None, typer.Option(help="the agent (prompt, tools) to go on with")
    ] = None,
) -> None:
    """Copy a thread's events up to a point into a new thread, to try another prompt or
    model from there. The copy talks over the API, never the original Slack thread or mail."""

    async def go(store: Store) -> str:
        return await _threads(store).fork(thread_id, at, agent=agent)

    new_id = _with_store(go)
    typer.echo(new_id)
    typer.echo(f"relaybot: forked {thread_id} at seq {at} into {new_id}", err=True)


outbox_cli = typer.Typer(no_args_is_help=True, help="Inspect and retry outbound messages.")
cli.add_typer(outbox_cli, name="outbox")


@outbox_cli.command("list")
def outbox_list(
    dead: Annotated[bool, typer.Option("--dead", help="only rows that gave up")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """List outbound messages, oldest first."""

    async def go(store: Store) -> None:
        rows = await Outbox(store.engine).list(status="dead" if dead else None, limit=limit)
        header = f"{'ID':>6}  {'THREAD':36}  {'SEQ':>4}  {'CHANNEL':8}  {'STATUS':8}  TRIES  ERROR"
        typer.echo(header)
        for r in rows:
            error = (r.last_error or "")[:60]
            typer.echo(
                f"{r.id:>6}  {r.thread_id:36}  {r.seq:>4}  {r.channel:8}  {r.status:8}  "
                f"{r.attempts:>5}  {error}"
            )

    _with_store(go)


@outbox_cli.command("retry")
def outbox_retry(row_id: int) -> None:
    """Give a dead outbound message another round of attempts."""

    async def go(store: Store) -> bool:
        return await Outbox(store.engine).retry(row_id)

    if not _with_store(go):
        typer.echo(f"relaybot: outbox row {row_id} is not dead (or does not exist)", err=True)
        raise typer.Exit(1)
    typer.echo(f"relaybot: outbox row {row_id} will be sent again")


tokens_cli = typer.Typer(no_args_is_help=True, help="Make API tokens (named, scoped, hashed).")
cli.add_typer(tokens_cli, name="tokens")


@tokens_cli.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="the token's name, as decisions record it")],
    scope: Annotated[
        list[str], typer.Option(help="read, launch, respond or admin; repeat for several")
    ] = [],  # noqa: B006  (typer reads the default, never mutates it)
    agent: Annotated[
        list[str], typer.Option(help="may decide this agent's approvals (approve:<agent>)")
    ] = [],  # noqa: B006
) -> None:
    """Make a token: it is printed once; add the entry printed after it to API_TOKENS (only
    its SHA-256 is kept). To revoke it, remove the entry."""
    import json

    from app.tokens import SCOPES, digest, new_token

    unknown = [s for s in scope if s not in SCOPES]
    if unknown or not (scope or agent) or not name.strip():
        typer.echo(
            f"relaybot: give a --name and scopes among {', '.join(SCOPES)} or --agent", err=True
        )
        raise typer.Exit(2)
    token = new_token()
    scopes = [*scope, *(f"approve:{a}" for a in agent)]
    entry = {"name": name.strip(), "scopes": scopes, "sha256": digest(token)}
    typer.echo(token)
    typer.echo(
        "relaybot: the token above is shown once. Add this entry to API_TOKENS (a JSON list):",
        err=True,
    )
    typer.echo(json.dumps(entry), err=True)


def main() -> None:
    from app.plugins import CLI, plugins

    for name, sub in plugins(CLI):  # commands of agents and channels: `relaybot orders …`
        cli.add_typer(sub, name=name)
    cli(prog_name="relaybot")


if __name__ == "__main__":
    main()
