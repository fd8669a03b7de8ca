"""``relaybot orders …``: the refunds agent's orders (a ``relaybot.cli`` entry point)."""

from __future__ import annotations

import asyncio

import typer

from agents.refunds import load_sample
from app.settings import load_settings
from app.store import Store

orders = typer.Typer(no_args_is_help=True, help="The refunds agent's orders.")


@orders.command("load-sample")
def orders_load_sample() -> None:
    """Load a few sample orders for the refunds agent (again: nothing changes)."""
    settings = load_settings(llm_model="-")

    async def go() -> int:
        store = Store.from_url(settings.database_url)
        try:
            return await load_sample(store.engine)
        finally:
            await store.close()

    typer.echo(f"relaybot: {asyncio.run(go())} sample orders loaded")
