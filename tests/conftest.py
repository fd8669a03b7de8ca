"""Shared fixtures: real databases (SQLite and Postgres), local stand-ins, the real service.

Postgres: a throwaway database is created on the server named by ``TEST_POSTGRES_URL``
(default: the local one, 127.0.0.1:5432) for the whole session and dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from hypothesis import settings as hypothesis_settings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agents import deploybot
from app.agent import Agent
from app.settings import Settings
from app.store import Store
from app.store.migrate import upgrade
from app.web import create_app
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.mail_servers import dovecot, smtp_sink  # noqa: F401  (fixtures)
from tests.fakes.slack_api import FakeSlackAPI

# Property tests run the same examples every time (CI must not fail on a new draw); set
# HYPOTHESIS_PROFILE=fuzz to search afresh, longer.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("fuzz", max_examples=5_000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = (
    "outbox",
    "inbound_receipts",
    "inbound_quarantine",
    "events",
    "threads",
    "orders",
    "refunds",
)


def _pg_url(database: str) -> str:
    base, _, _ = PG_ADMIN.rpartition("/")
    return f"{base}/{database}".replace("postgresql://", "postgresql+asyncpg://", 1)


async def pg_admin(sql: str, *args: object) -> None:
    """One statement as the admin user, on a connection of its own."""
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"relaybot_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    url = _pg_url(name)
    upgrade(url)
    yield url
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def _emptied(url: str) -> str:
    async def truncate() -> None:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
        finally:
            await conn.close()

    asyncio.run(truncate())
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        target = tmp_path / "relaybot.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite+aiosqlite:///{target}"
    return _emptied(request.getfixturevalue("pg_database"))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A migrated, empty Postgres database (for what only Postgres does: many processes)."""
    return _emptied(pg_database)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = Store.from_url(database_url)
    yield s
    await s.close()


@pytest.fixture
async def llm_server() -> AsyncIterator[FakeLLMServer]:
    server = await FakeLLMServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def deploy_hook() -> AsyncIterator[HttpSink]:
    sink = await HttpSink().start()
    yield sink
    await sink.stop()


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlackAPI]:
    api = await FakeSlackAPI().start()
    yield api
    await api.stop()


@pytest.fixture
async def slack_svc(
    database_url: str,
    llm_server: FakeLLMServer,
    slack: FakeSlackAPI,
    deploy_hook: HttpSink,
    git_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Service]:
    """deploybot in Slack (the Web API a local stand-in), with UBOB its only approver."""
    from tests.test_slack import BOB, deploy_flow, slack_settings

    monkeypatch.setenv("DEPLOYBOT_SLACK_APPROVERS", BOB)
    llm_server.responder = deploy_flow
    settings = slack_settings(database_url, llm_server, slack)
    async with serve(settings, deploybot_agents(git_repo, deploy_hook)) as service:
        yield service


@pytest.fixture(scope="session")
def git_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
        git("commit", "-q", "--allow-empty", "-m", tag)
        git("tag", tag)
    return repo


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Wait until ``check()`` is true, polling; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


@dataclass
class Service:
    """The real service, listening on a loopback port, and an HTTP client for it."""

    url: str
    client: httpx.AsyncClient
    settings: Settings
    app_state: Any = None  # the app's state: .runtime, .threads

    async def wait_for(self, thread_id: str, *statuses: str, within: float = 10.0) -> dict:
        """Poll GET /thread/{id} until its status is one of ``statuses``."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            body = (await self.client.get(f"/thread/{thread_id}")).json()
            if body["status"] in statuses:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"thread stayed {body['status']}: {body['events']}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def serve(
    settings: Settings, agents: dict[str, Agent] | None = None, token: str | None = None
) -> AsyncIterator[Service]:
    app = create_app(settings, agents=agents)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
        try:
            yield Service(url, client, settings, app.state)
        finally:
            server.should_exit = True
            await task


def make_settings(database_url: str, llm_server: FakeLLMServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "llm_model": "openai/test-model",
        "llm_api_base": llm_server.base_url,
        "llm_retry_backoff": 0,
        "llm_timeout": 5,
        "public_url": "http://relaybot.test",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def deploybot_agents(repo: Path, hook: HttpSink) -> dict[str, Agent]:
    cfg = deploybot.DeploybotSettings(repo=repo, webhook_url=hook.url)
    agent = deploybot.build(cfg)
    return {agent.name: agent}


@pytest.fixture(autouse=True)
def _provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # litellm's OpenAI path wants a key; the stand-in ignores it.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
