"""``relaybot intake …``: inbound messages held in quarantine because they cannot be
processed (a ``relaybot.cli`` entry point of the email channel, the channel that holds them).

``list`` shows them, ``show`` one (``--content`` writes the message itself, an .eml), ``retry``
runs one through the channel again here (after a fix, say: it goes through the same code
as a new message, and is released if it is processed), ``drop`` lets one go unprocessed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn, TypeVar

import typer

from app.errors import ConfigError
from app.settings import Settings, load_settings
from app.store import Store
from app.store.quarantine import DROPPED, HELD, RELEASED, Quarantine, Quarantined

intake = typer.Typer(
    no_args_is_help=True, help="Inbound messages held because they cannot be processed."
)

T = TypeVar("T")


def _settings() -> Settings:
    try:  # looking needs the database only: a model need not be configured
        return load_settings(**({} if "LLM_MODEL" in os.environ else {"llm_model": "-"}))
    except ConfigError as exc:
        typer.echo(f"relaybot: configuration error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def _with_quarantine(work: Callable[[Quarantine], Awaitable[T]]) -> T:
    settings = _settings()

    async def go() -> T:
        store = Store.from_url(settings.database_url)
        try:
            return await work(Quarantine(store.engine))
        finally:
            await store.close()

    return asyncio.run(go())


@intake.command("list")
def intake_list(
    everything: Annotated[
        bool, typer.Option("--all", help="released and dropped ones too")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """List held messages, newest first."""
    rows = _with_quarantine(lambda q: q.list(status=None if everything else HELD, limit=limit))
    typer.echo(f"{'ID':>5}  {'CHANNEL':8}  {'SOURCE':8}  {'STATUS':8}  TRIES  {'HELD AT':19}  "
               f"{'FROM':30}  REASON")  # fmt: skip
    for r in rows:
        held = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{r.id:>5}  {r.channel:8}  {r.source:8}  {r.status:8}  {r.attempts:>5}  {held}  "
            f"{(r.sender or '-')[:30]:30}  {r.reason[:80]}"
        )


@intake.command("show")
def intake_show(
    row_id: int,
    content: Annotated[
        bool, typer.Option("--content", help="write the message itself to stdout")
    ] = False,
) -> None:
    """Show one held message: where it came from, why it is held."""
    row = _found(_with_quarantine(lambda q: q.get(row_id)), row_id)
    if content:
        if row.content is None:
            _fail(f"message {row_id} was too large to keep: {row.reason}")
        sys.stdout.buffer.write(row.content)
        return
    for label, value in (
        ("id", row.id),
        ("channel", f"{row.channel} (via {row.source})"),
        ("status", f"{row.status}, {row.attempts} attempt(s)"),
        ("held", f"{row.created_at:%Y-%m-%d %H:%M:%S}, last {row.updated_at:%Y-%m-%d %H:%M:%S}"),
        ("from", row.sender or "-"),
        ("message-id", row.external_id or "-"),
        ("size", f"{row.size:,} bytes" + ("" if row.content is not None else ", not kept")),
        ("reason", row.reason),
    ):
        typer.echo(f"{label + ':':12} {value}")


@intake.command("retry")
def intake_retry(row_id: int) -> None:
    """Process a held message again, as if it had just arrived.

    Released if it goes through. Needs the channel's settings, as the service has them
    (SMTP_HOST, EMAIL_FROM, SECRET_KEY)."""
    from app.web import runtime
    from channels.email.intake import Unavailable

    settings = _settings()

    async def go() -> str:
        async with runtime(settings, with_worker=False) as rt:
            quarantine = Quarantine(rt.store.engine)
            row = _found(await quarantine.get(row_id), row_id)
            if row.status != HELD:
                _fail(f"message {row_id} is {row.status}")
            if row.content is None:
                _fail(f"message {row_id} was not kept (it is in the mailbox): {row.reason}")
            channel = rt.channels.get(row.channel)
            if channel is None or getattr(channel.state, "intake", None) is None:
                _fail(f"{row.channel} is not configured here: set its settings as the service has")
            taken = await channel.state.intake.take(row.content, row.source)
            if taken.held is not None:
                _fail(f"message {row_id} still cannot be processed: {taken.reason}")
            await quarantine.settle(row_id, RELEASED)
            outcome = taken.outcome
            assert outcome is not None
            thread = f", thread {outcome.thread_id}" if outcome.thread_id else ""
            return f"{outcome.action}{thread}" + (f" ({outcome.reason})" if outcome.reason else "")

    try:
        done = asyncio.run(go())
    except Unavailable as exc:
        _fail(f"cannot process it now: {exc.reason}")
    typer.echo(f"relaybot: message {row_id} processed: {done}")


@intake.command("drop")
def intake_drop(row_id: int) -> None:
    """Let a held message go unprocessed (spam, say); it stays listed with --all."""
    if not _with_quarantine(lambda q: q.settle(row_id, DROPPED)):
        _fail(f"message {row_id} is not held (or does not exist)")
    typer.echo(f"relaybot: message {row_id} dropped")


def _found(row: Quarantined | None, row_id: int) -> Quarantined:
    if row is None:
        _fail(f"no held message {row_id}")
    return row


def _fail(message: str) -> NoReturn:
    typer.echo(f"relaybot: {message}", err=True)
    raise typer.Exit(1)
