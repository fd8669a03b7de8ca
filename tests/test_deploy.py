"""What the container runs, without a Docker engine: the wheel installed into a fresh virtual
environment, started with the Dockerfile's own CMD and ENV against Postgres; and replicas
migrating one database at once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory

from app.store.migrate import alembic_config
from tests.conftest import TABLES, _pg_url, pg_admin
from tests.fakes.llm_server import FakeLLMServer, act

ROOT = Path(__file__).resolve().parent.parent
MIGRATION_LOCK = 0x72656C6179626F74  # migrations/env.py


# -- the Dockerfile, read the way Docker reads its last stage --------------------------------


def dockerfile_stage() -> tuple[dict[str, str], list[str], list[str]]:
    """The final stage's ENV, CMD and HEALTHCHECK command."""
    text = (ROOT / "Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()  # join continued lines
    last = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    env: dict[str, str] = {}
    cmd: list[str] = []
    check: list[str] = []
    for line in lines[last:]:
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
        elif line.startswith("HEALTHCHECK "):
            check = json.loads(line.split(" CMD ", 1)[1])
    return env, cmd, check


def test_the_dockerfile_is_what_the_tests_run() -> None:
    env, cmd, check = dockerfile_stage()
    assert cmd == ["relaybot", "serve"]
    assert env["LOG_FORMAT"] == "json" and env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert check[:2] == ["python", "-c"] and "/healthz" in check[2]
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER relaybot$", text, re.MULTILINE)  # not root
    assert text.count("FROM ") == 2  # build stage, then the slim runtime


# -- Postgres databases of our own ---------------------------------------------------------


@pytest.fixture
async def fresh_pg() -> AsyncIterator[str]:
    """An empty Postgres database: no schema, nothing migrated."""
    name = f"relaybot_deploy_{uuid.uuid4().hex[:10]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    yield _pg_url(name)
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def schema_of(url: str) -> tuple[set[str], list[str]]:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        versions = (
            [r["version_num"] for r in await conn.fetch("SELECT version_num FROM alembic_version")]
            if "alembic_version" in tables
            else []
        )
    finally:
        await conn.close()
    return tables, versions


def head_revisions() -> list[str]:
    """The head of each branch: the core's and each agent's own."""
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert heads
    return sorted(heads)


async def test_two_replicas_migrating_at_once_end_with_one_correct_schema(
    fresh_pg: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DATABASE_URL"))}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL=fresh_pg)

    async def migrator() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "migrate", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    # Hold the migration lock, as a replica in the middle of migrating would: both wait.
    holder = await asyncpg.connect(fresh_pg.replace("+asyncpg", ""))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        procs = [await migrator(), await migrator()]
        await asyncio.sleep(4)  # long enough for both to start and reach the lock
        assert all(p.returncode is None for p in procs), "a migrator did not wait for the lock"
        tables, _ = await schema_of(fresh_pg)
        assert "threads" not in tables
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        # Released together: they race for the lock; one migrates, the other finds it done.
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    finally:
        await holder.close()
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert b"database is up to date" in out
    tables, versions = await schema_of(fresh_pg)
    assert set(TABLES) <= tables
    assert sorted(versions) == head_revisions()


# -- the wheel, in a fresh virtual environment, run as the image runs it -----------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """relaybot's wheel installed alone into a new virtual environment: its bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next((work / "dist").glob("relaybot-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    yield venv / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_image_entrypoint_serves_from_a_fresh_install(
    installed: Path, fresh_pg: str, llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    image_env, cmd, healthcheck = dockerfile_stage()
    port = free_port()
    token = "t" * 24
    env = {
        "HOME": str(tmp_path),
        **image_env,
        # The image puts its virtual environment first on PATH; here, the fresh one.
        "PATH": f"{installed}:{os.environ['PATH']}",
        "PORT": str(port),
        "DATABASE_URL": fresh_pg.replace("postgresql+asyncpg://", "postgresql://"),
        "LLM_MODEL": "openai/gpt-4o-mini",
        "LLM_API_BASE": llm_server.base_url,
        "OPENAI_API_KEY": "sk-test",
        "API_TOKEN": token,
        "SECRET_KEY": "k" * 32,
        "POLL_INTERVAL": "0.5",
        "DEPLOYBOT_REPO": str(tmp_path),
    }
    llm_server.script(act("done_for_now", message="hello from the container"))
    # The working directory holds no source: only the installed wheel can answer.
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as client:
            await _until_up(client, proc, log_path)
            assert (await client.get("/readyz")).json() == {"status": "ready"}
            health = await asyncio.create_subprocess_exec(*healthcheck, env=env)
            assert await asyncio.wait_for(health.wait(), 30) == 0  # the image's HEALTHCHECK

            launched = await client.post("/thread", json={"message": "hello"})
            assert launched.status_code == 201, launched.text
            tid = launched.json()["thread_id"]
            for _ in range(500):
                thread = (await client.get(f"/thread/{tid}")).json()
                if thread["status"] == "done":
                    break
                await asyncio.sleep(0.02)
            assert thread["status"] == "done", thread
            metrics = (await client.get("/metrics")).text
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    output = await asyncio.to_thread(log_path.read_text)
    # A clean stop: uvicorn finishes, then re-raises the SIGTERM it caught (Docker: 143).
    assert proc.returncode in (0, -signal.SIGTERM), output[-3000:]
    assert "Application shutdown complete" in output

    assert re.search(r'relaybot_steps_total\{agent="deploybot",kind="call_model"\} 1\.0', metrics)
    assert 'relaybot_threads_waiting{status="awaiting_approval"} 0.0' in metrics
    # It migrated the empty database itself, under the lock.
    tables, versions = await schema_of(fresh_pg)
    assert set(TABLES) <= tables and sorted(versions) == head_revisions()
    # LOG_FORMAT=json from the image: every line is one JSON object; the thread's are tagged.
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    tagged = [r for r in records if r.get("thread_id") == tid]
    assert {r.get("event_type") for r in tagged} >= {"action", "done_for_now"}
    assert all(r["agent"] == "deploybot" for r in tagged)


async def _until_up(client: httpx.AsyncClient, proc: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(600):
        if proc.returncode is not None:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"relaybot serve exited {proc.returncode}: {output}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("relaybot serve did not answer /healthz within 60 s")


def source_env(
    pg_url: str, llm_server: FakeLLMServer, port: int, tmp_path: Path, **extra: str
) -> dict[str, str]:
    """The environment of `python -m app.cli …` from this checkout, against ``pg_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DATABASE_URL"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DATABASE_URL=pg_url,
        LLM_MODEL="openai/test-model",
        LLM_API_BASE=llm_server.base_url,
        PORT=str(port),
        API_TOKEN="t" * 24,
        DEPLOYBOT_REPO=str(tmp_path),
        **extra,
    )
    return env


async def test_a_worker_container_answers_its_healthcheck_and_scrapes(
    pg_url: str, llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    """`relaybot worker --port`: the image's HEALTHCHECK and Prometheus reach workers too."""
    _, _, healthcheck = dockerfile_stage()
    port = free_port()
    env = source_env(pg_url, llm_server, port, tmp_path)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "worker", "--port", str(port),
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await _until_up(client, proc, log_path)
            ready = await client.get("/readyz")
            metrics = await client.get("/metrics")
        health = await asyncio.create_subprocess_exec(*healthcheck, env=env)
        assert await asyncio.wait_for(health.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 0, await asyncio.to_thread(log_path.read_text)
    assert ready.json() == {"status": "ready"}
    assert "relaybot_outbox_rows" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")


async def test_serve_runs_several_processes_on_one_port(
    pg_url: str, llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    """WEB_CONCURRENCY=2: two processes answer on the port, each stepping threads."""
    port = free_port()
    token = "t" * 24
    env = source_env(pg_url, llm_server, port, tmp_path, WEB_CONCURRENCY="2", POLL_INTERVAL="0.5")
    llm_server.responder = lambda body: act("done_for_now", message="hi")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "serve", "--no-migrate",
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        headers = {"Authorization": f"Bearer {token}"}
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as client:
            await _until_up(client, proc, log_path)
            children = await _children(proc.pid)
            ids = []
            for i in range(20):  # new connections: the kernel spreads them over the processes
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as one:
                    launched = await one.post("/thread", json={"message": f"hi {i}"})
                    ids.append(launched.json()["thread_id"])
            for _ in range(500):
                statuses = [(await client.get(f"/thread/{t}")).json()["status"] for t in ids]
                if set(statuses) == {"done"}:
                    break
                await asyncio.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    output = await asyncio.to_thread(log_path.read_text)
    assert set(statuses) == {"done"}, output[-3000:]
    assert len(children) == 2, children
    assert proc.returncode in (0, -signal.SIGTERM), output[-3000:]


async def _children(pid: int) -> list[int]:
    """The processes uvicorn started (their parent is ``pid``), once both are up."""
    found: list[int] = []
    for _ in range(100):
        found = await asyncio.to_thread(_spawned_children, pid)
        if len(found) >= 2:
            return found
        await asyncio.sleep(0.1)
    return found


def _spawned_children(pid: int) -> list[int]:
    """multiprocessing's spawned children of ``pid``, not its resource tracker. Read from /proc:
    ``ps`` cuts command lines to the terminal's width (COLUMNS), which hid the tracker's name."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return sorted(found)
