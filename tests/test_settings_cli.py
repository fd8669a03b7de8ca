"""Settings fail early with the variable's name; the CLI works on a real database."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.errors import ConfigError
from app.settings import load_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith(
            ("LLM_", "DATABASE_", "API_", "PORT", "HOST", "SECRET_", "DEFAULT_AGENT")
        ):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({}, "LLM_MODEL", "is required"),
        ({"LLM_MODEL": "  "}, "LLM_MODEL", "must not be empty"),
        ({"LLM_MODEL": "x", "DATABASE_URL": "mysql://db"}, "DATABASE_URL", "postgresql://"),
        ({"LLM_MODEL": "x", "PORT": "eighty"}, "PORT", "integer"),
        ({"LLM_MODEL": "x", "SECRET_KEY": "short"}, "SECRET_KEY", "32"),
        ({"LLM_MODEL": "x", "API_WEBHOOK_URL": "http://h/x"}, "SECRET_KEY", "is required with"),
        ({"LLM_MODEL": "x", "SLACK_CHANNEL_AGENTS": "C1"}, "SLACK_CHANNEL_AGENTS", "CHANNEL=agent"),
        ({"LLM_MODEL": "x", "WEB_CONCURRENCY": "2"}, "WEB_CONCURRENCY", "needs Postgres"),
    ],
)
def test_bad_settings_name_the_variable(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], variable: str, problem: str
) -> None:
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.variable == variable
    assert problem in err.value.message


def test_defaults_and_normalisation(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LLM_MODEL", "openai/gpt-4o-mini")
    clean_env.setenv("DATABASE_URL", "postgres://u@h/db")
    s = load_settings()
    assert s.database_url == "postgresql+asyncpg://u@h/db" and s.is_postgres
    assert s.bind_host == "127.0.0.1"  # no API token: loopback only
    assert s.default_agent == "deploybot" and s.step_cap == 20
    clean_env.setenv("API_TOKEN", "t" * 20)
    assert load_settings().bind_host == "0.0.0.0"
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def relaybot(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return {**env, **extra}


def test_serve_without_a_model_stops_naming_the_variable(tmp_path: Path) -> None:
    result = relaybot("serve", cwd=tmp_path, env=base_env())
    assert result.returncode == 2
    assert "configuration error: LLM_MODEL: is required" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_migrates_the_default_sqlite_database_and_answers(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(LLM_MODEL="openai/gpt-4o-mini", PORT=str(port), HOST="0.0.0.0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        assert (tmp_path / "relaybot.db").exists()
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "API_TOKEN is not set" in stderr and "127.0.0.1 only" in stderr


def test_migrate_list_and_show(tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}")
    migrated = relaybot("migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert relaybot("threads", "list", cwd=tmp_path, env=env).stdout.count("\n") == 1  # header only

    import asyncio

    from app.events import ActionChosen, DoneForNow, UserMessage
    from app.store import Store

    async def seed() -> str:
        store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
        record = await store.create_thread(
            agent="deploybot",
            channel="api",
            new_events=[(UserMessage(text="ship v1", author="ann"), "ann")],
            status="running",
        )
        chosen = ActionChosen(
            action={"intent": "done_for_now", "message": "shipped"},
            model="gpt-4o-mini",
            prompt_tokens=321,
            completion_tokens=12,
            cost_usd=0.0012345,
            latency_ms=456.0,
        )
        await store.append(
            record.id,
            1,
            [(chosen, None), (DoneForNow(message="shipped"), None)],
            status="done",
            run_after=None,
        )
        await store.close()
        return record.id

    tid = asyncio.run(seed())
    listed = relaybot("threads", "list", "--status", "done", cwd=tmp_path, env=env)
    assert re.search(rf"{tid}\s+deploybot\s+done\s+3", listed.stdout), listed.stdout
    shown = relaybot("threads", "show", tid, cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "ann via api: ship v1" in shown.stdout
    assert "321/12" in shown.stdout and "456 ms" in shown.stdout
    assert "$0.0012" in shown.stdout  # the call's cost, on its row
    assert "1 model calls (gpt-4o-mini x1)" in shown.stdout
    assert "tokens: 321 prompt + 12 completion; cost: $0.0012" in shown.stdout
    missing = relaybot("threads", "show", "nope", cwd=tmp_path, env=env)
    assert missing.returncode == 1 and "thread nope not found" in missing.stderr


def test_importing_the_llm_module_never_reaches_the_network(tmp_path: Path) -> None:
    env = base_env()
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
    code = "import app.llm, os; print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stdout.strip() == "True"
    assert "cost map" not in result.stderr


def test_extra_agents_and_their_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.plugins import load_agents

    names = set(load_agents("tests.fakes.agents:build_echo"))
    assert names == {"deploybot", "refunds", "echo"}
    for spec, problem in [
        ("nomodule", "module:attribute"),
        ("tests.fakes.nope:build", "cannot import"),
        ("tests.fakes.agents:missing", "has no missing"),
        ("tests.fakes.agents:build_nothing", "returned NoneType"),
        ("tests.fakes.agents:build_deploybot", "clash"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_agents(spec)
        assert err.value.variable == "EXTRA_AGENTS" and problem in err.value.message


def test_outbox_list_dead_and_retry(tmp_path: Path) -> None:
    import asyncio

    from app.events import DoneForNow, UserMessage
    from app.store import OutboxMessage, Store
    from app.store.outbox import Outbox

    db = tmp_path / "cli.db"
    env = base_env(DATABASE_URL=f"sqlite:///{db}")
    assert relaybot("migrate", cwd=tmp_path, env=env).returncode == 0

    async def seed() -> tuple[str, int]:
        from datetime import timedelta

        store = Store.from_url(f"sqlite+aiosqlite:///{db}")
        record = await store.create_thread(
            agent="deploybot",
            channel="api",
            new_events=[(UserMessage(text="x"), None)],
            status="running",
        )
        await store.append(
            record.id,
            1,
            [(DoneForNow(message="bye"), None)],
            status="done",
            run_after=None,
            messages=[OutboxMessage("webhook", {"type": "done_for_now"})],
        )
        outbox = Outbox(store.engine)
        [row] = await outbox.claim(limit=1, lease=timedelta(minutes=1))
        await outbox.failed(row, "webhook answered 404: no such hook", retry_at=None)
        await store.close()
        return record.id, row.id

    tid, row_id = asyncio.run(seed())
    dead = relaybot("outbox", "list", "--dead", cwd=tmp_path, env=env)
    assert re.search(
        rf"{row_id}\s+{tid}\s+2\s+webhook\s+dead\s+1\s+webhook answered 404", dead.stdout
    )
    shown = relaybot("threads", "show", tid, cwd=tmp_path, env=env)
    assert (
        f"#{row_id} seq 2 via webhook: DEAD after 1 attempt(s): webhook answered 404"
        in shown.stdout
    )
    retried = relaybot("outbox", "retry", str(row_id), cwd=tmp_path, env=env)
    assert retried.returncode == 0 and "will be sent again" in retried.stdout
    again = relaybot("outbox", "retry", str(row_id), cwd=tmp_path, env=env)
    assert again.returncode == 1 and "is not dead" in again.stderr
    assert relaybot("outbox", "list", "--dead", cwd=tmp_path, env=env).stdout.count("\n") == 1


def test_socket_mode_without_an_app_token_stops_naming_it(tmp_path: Path) -> None:
    env = base_env(
        LLM_MODEL="openai/gpt-4o-mini", SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET="s"
    )
    result = relaybot("serve", "--socket-mode", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "configuration error: SLACK_APP_TOKEN" in result.stderr


def test_orders_load_sample_is_repeatable(tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'shop.db'}")
    assert relaybot("migrate", cwd=tmp_path, env=env).returncode == 0
    for _ in range(2):
        loaded = relaybot("orders", "load-sample", cwd=tmp_path, env=env)
        assert loaded.returncode == 0 and "4 sample orders loaded" in loaded.stdout
    import sqlite3

    with sqlite3.connect(tmp_path / "shop.db") as db:
        assert db.execute("select count(*), sum(amount_cents) from orders").fetchone() == (4, 61200)


def test_tokens_create_prints_a_token_once_and_its_hashed_entry(tmp_path: Path) -> None:
    import json

    from app.tokens import read_tokens

    made = relaybot(
        "tokens", "create", "--name", "console", "--scope", "read", "--agent", "deploybot",
        cwd=tmp_path, env=base_env(),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    entry = json.loads(made.stderr.strip().splitlines()[-1])
    assert token not in made.stderr and entry["sha256"] != token  # only its digest is kept
    found = read_tokens(None, json.dumps([entry])).find(token)
    assert found is not None and found.name == "console"
    assert found.allows("read") and found.approves("deploybot") and not found.allows("launch")
    assert read_tokens(None, json.dumps([entry])).find(token + "x") is None
    bad = relaybot(
        "tokens", "create", "--name", "x", "--scope", "root", cwd=tmp_path, env=base_env()
    )
    assert bad.returncode == 2 and "scopes among" in bad.stderr
