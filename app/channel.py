"""What a channel is to the core: one small Protocol a channel package implements, so that
``app/`` never imports ``channels/``.

A channel *plugin* (registered under the ``relaybot.channels`` entry point) installs its HTTP
routes on the web app and, when its settings turn it on, builds a :class:`Channel` from the
:class:`ChannelContext`: a sender that delivers the contacts the core routes to it (its
``answers``: the thread channels it answers in; ``approvals_for``: the agents whose approval
traffic it carries), a group resolver that proves membership of the groups a policy names,
background loops (IMAP), and what its routes need (``state``, found again with
:func:`channel_state`). Which contact goes to whom is decided in the core; a channel only
proves who a person is and delivers what it is given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jinja2
from fastapi import FastAPI
from starlette.requests import Request

from app.agent import Agent
from app.dispatch import Sender
from app.policy import Policies
from app.service import GroupResolver, Threads
from app.settings import Settings
from app.store import Store
from app.store.outbox import Outbox


@dataclass(frozen=True)
class ChannelContext:
    """Everything a channel may build on, made by the core from Settings at start-up."""

    settings: Settings
    agents: Mapping[str, Agent]
    policies: Policies
    store: Store
    outbox: Outbox
    http: httpx.AsyncClient
    env: jinja2.Environment
    threads: Threads
    socket_mode: bool = False  # `serve --socket-mode`: a channel that can, connects out


@dataclass
class Channel:
    """One channel, configured and built."""

    name: str
    sender: Sender | None = None
    answers: Sequence[str] = ()
    approvals_for: Sequence[str] = ()
    groups: GroupResolver | None = None
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    state: Any = None
    # Held open while the service runs (Slack's Socket Mode connection, say).
    connection: Callable[[], AbstractAsyncContextManager[None]] | None = None
    close: Callable[[], Awaitable[None]] | None = None
    connects_out: bool = False  # it took `--socket-mode`


class ChannelPlugin(Protocol):
    name: str

    def routes(self, app: FastAPI) -> None:
        """Install the channel's HTTP routes (they answer 404 while it is not configured)."""

    def build(self, ctx: ChannelContext) -> Channel | None:
        """The channel, if its settings turn it on; raise ConfigError for a bad setting."""


def channel_state(request: Request, name: str) -> Any:
    """What the channel ``name`` built for its routes (None while it is not configured)."""
    channels: Mapping[str, Channel] = getattr(request.app.state, "channels", {}) or {}
    found = channels.get(name)
    return found.state if found is not None else None
