"""One bad mail never blocks the others (issue 13), on real servers: Dovecot for IMAP, the
real service for the webhooks, Postgres behind a relay that a test cuts for "the database
is down". A message that can never be processed is held in quarantine (and moved to the
failed folder, answered with a 4xx); one that cannot be processed now waits (unseen, or a
503) and goes through when the database is back."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from agents import deploybot
from app.agent import Agent
from app.store.quarantine import HELD, Quarantine
from channels.email.parse import InboundMail, MailRejected, safe_id
from channels.email.parsing import Parser
from tests.conftest import Service, eventually, serve
from tests.fakes.llm_server import FakeLLMServer, act
from tests.fakes.tcp_proxy import TcpProxy
from tests.test_email import BOT, INBOUND_TOKEN, customer_mail, email_settings

LONG_ID = "<" + "x" * 600 + "@example.net>"


def deep_mail(depth: int = 1000) -> bytes:
    """A thousand nested multiparts: the parser's recursion, before it is bounded."""
    head = b"From: eve@example.net\r\nTo: bot@relay.test\r\nMessage-ID: <deep@example.net>\r\n"
    level = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
    return head + b"".join(level % (i, i) for i in range(depth)) + b"\r\nhi\r\n"


def nul_mail() -> bytes:
    return (
        b"From: nul@example.net\r\nTo: bot@relay.test\r\nSubject: deploy\x00now\r\n"
        b"Message-ID: <nul@example.net>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"please deploy\x00 the backend\r\n"
    )


def token_mail() -> bytes:
    """A reply to our plus-address with a token no signer made: non-ASCII."""
    return (
        "From: tok@example.net\r\nTo: bot+äöü.1.2.3@relay.test\r\nSubject: approve\r\n"
        "Message-ID: <tok@example.net>\r\n\r\napprove\r\n"
    ).encode()


def long_id_mail(text: str, message_id: str = LONG_ID, **headers: str) -> bytes:
    """Written out: EmailMessage would fold a 600-character ID into encoded words."""
    extra = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return (
        f"From: Ana <ana@example.net>\r\nTo: {BOT}\r\nSubject: Deploy\r\n"
        f"Message-ID: {message_id}\r\n{extra}\r\n{text}\r\n"
    ).encode()


def good_mail(n: int = 1) -> bytes:
    return customer_mail(
        f"deploy the backend, please ({n})",
        sender=f"good{n}@example.net",
        to=BOT,
        subject=f"Deploy {n}",
        message_id=f"<good-{n}@example.net>",
    )


def agents() -> dict[str, Agent]:
    return {"deploybot": deploybot.build(deploybot.DeploybotSettings())}


def idle(_: dict[str, Any]) -> Any:
    return act("done_for_now", message="noted")


async def threads_by_author(svc: Service) -> dict[str, dict[str, Any]]:
    store = svc.app_state.runtime.store
    found = {}
    for summary in await store.list_threads(limit=100):
        record = await store.load(summary.id)
        found[record.events[0].event.author] = {"record": record, "summary": summary}
    return found


async def test_a_poison_mail_is_held_in_the_failed_folder_and_the_next_ones_are_read(
    database_url: str, llm_server: FakeLLMServer, smtp_sink: Any, dovecot: Any
) -> None:
    llm_server.responder = idle
    long_id = long_id_mail("deploy, long id").replace(b"ana@", b"long@")
    too_large = customer_mail("x" * 41_000_000, sender="big@example.net", to=BOT,
                              message_id="<big@example.net>")  # fmt: skip
    # The poison first: the reader took the oldest unseen message and retried it forever.
    for raw in (deep_mail(), nul_mail(), long_id, token_mail(), too_large, good_mail()):
        await dovecot.append("bot", "secret", raw)
    settings = email_settings(database_url, llm_server, smtp_sink.port, dovecot=dovecot)
    async with serve(settings, agents()) as svc:
        fetcher = svc.app_state.channels["email"].state.fetcher
        await eventually(lambda: _true(fetcher.processed + fetcher.held == 6), within=30)
        threads = await threads_by_author(svc)
        assert set(threads) == {"nul@example.net", "long@example.net", "good1@example.net"}
        nul = threads["nul@example.net"]["record"].events[0].event
        # Dovecot stores a NUL as 0x80 (the webhook test sees ours): no NUL either way.
        assert "\x00" not in nul.subject + nul.text and nul.text.startswith("please deploy")
        assert threads["long@example.net"]["summary"].channel_key == safe_id(LONG_ID)
        quarantine = Quarantine(svc.app_state.runtime.store.engine)
        big, deep = await quarantine.list()  # newest first
        held = await quarantine.get(deep.id)
        assert held is not None and held.source == "imap" and held.sender == "eve@example.net"
        assert "nested" in held.reason and b"<deep@example.net>" in (held.content or b"")
        assert (big.sender, big.external_id) == ("big@example.net", "<big@example.net>")
        assert big.reason.startswith("too large") and big.size > 41_000_000
        assert (await quarantine.get(big.id)).content is None  # type: ignore[union-attr]
    inbox = await dovecot.fetch_all("bot", "secret")
    assert len(inbox) == 4 and all("\\Seen" in flags for _, flags, _ in inbox)
    moved = await dovecot.fetch_all("bot", "secret", "relaybot-failed")
    assert [raw.count(b"Message-ID: <") for _, _, raw in moved] == [1, 1]
    assert b"<deep@example.net>" in moved[0][2] and b"<big@example.net>" in moved[1][2]


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def svc(
    database_url: str, llm_server: FakeLLMServer, smtp_sink: Any
) -> AsyncIterator[Service]:
    llm_server.responder = idle
    async with serve(email_settings(database_url, llm_server, smtp_sink.port), agents()) as s:
        yield s


async def post(svc: Service, raw: bytes) -> Any:
    return await svc.client.post(
        "/email/inbound", content=raw, headers={"authorization": f"Bearer {INBOUND_TOKEN}"}
    )


async def test_the_webhook_answers_4xx_for_mail_that_can_never_be_processed(svc: Service) -> None:
    first = await post(svc, deep_mail())
    assert first.status_code == 422, first.text
    assert first.json()["action"] == "quarantined" and "nested" in first.json()["reason"]
    again = await post(svc, deep_mail())  # the provider tries again: the same row
    assert again.status_code == 422 and again.json()["id"] == first.json()["id"]
    [held] = await Quarantine(svc.app_state.runtime.store.engine).list()
    assert (held.attempts, held.status, held.source) == (2, HELD, "webhook")
    metrics = (await svc.client.get("/metrics")).text
    assert 'relaybot_inbound_quarantined{channel="email"} 1.0' in metrics
    # What made the service answer 500 (and the provider retry forever) is now taken in.
    started = await post(svc, nul_mail())
    assert started.status_code == 200, started.text
    record = await svc.app_state.runtime.store.load(started.json()["thread_id"])
    opening = record.events[0].event
    assert (opening.subject, opening.text) == ("deploy\ufffdnow", "please deploy\ufffd the backend")
    refused = await post(svc, token_mail())
    assert refused.json() == {"action": "refused", "thread_id": None,
                              "reason": "the reply token is malformed"}  # fmt: skip
    assert (await post(svc, token_mail())).json()["action"] == "duplicate"


async def test_a_failure_not_known_to_pass_holds_the_message_and_says_little(
    svc: Service,
) -> None:
    # EMAIL_AGENTS sends refunds@ to an agent this service does not have (since removed,
    # say): every such mail would fail the same way until someone changes the settings.
    answer = await post(svc, customer_mail("refund please", to="refunds@relay.test"))
    assert answer.status_code == 422
    assert answer.json()["reason"] == "failed: UnknownAgent"  # the kind, not the details
    [held] = await Quarantine(svc.app_state.runtime.store.engine).list()
    assert held.reason.startswith("failed: UnknownAgent: unknown agent 'refunds'")
    assert held.external_id == "<ana-1@example.net>" and held.sender == "ana@example.net"
    assert (await post(svc, good_mail())).json()["action"] == "started"  # the next one


async def test_a_long_message_id_is_keyed_by_digest_wherever_it_is_used(svc: Service) -> None:
    started = await post(svc, long_id_mail("deploy please"))
    assert started.status_code == 200 and started.json()["action"] == "started", started.text
    tid = started.json()["thread_id"]
    reply = long_id_mail("and the frontend", "<ana-2@example.net>", In_Reply_To=LONG_ID)
    answered = await post(svc, reply)  # found by the receipt its In-Reply-To names
    assert answered.json() == {"action": "continued", "thread_id": tid, "reason": None}
    assert (await post(svc, long_id_mail("again"))).json()["action"] == "duplicate"


async def test_a_forwarded_giant_is_cut_to_the_text_kept(svc: Service) -> None:
    body = "log line 0123456789 " * 20_000  # 400,000 characters
    started = await post(svc, customer_mail(body, to=BOT, message_id="<big@example.net>"))
    record = await svc.app_state.runtime.store.load(started.json()["thread_id"])
    text = record.events[0].event.text
    assert text.startswith("log line") and len(text) < 50_100
    assert re.search(r"\[… 350,0\d\d more characters not kept\]$", text)


POSTMARK = {
    "authorization": "Basic " + base64.b64encode(f"postmark:{INBOUND_TOKEN}".encode()).decode()
}


async def test_postmark_json_of_any_shape_is_a_message_or_a_4xx(svc: Service) -> None:
    wrong_types = {
        "From": 5,
        "To": ["x"],
        "Subject": {"a": 1},
        "Headers": "nope",
        "Attachments": [1, {"ContentLength": "abc", "Name": 7, "ContentType": "a b"}],
        "TextBody": None,
        "HtmlBody": ["<p>"],
        "MessageID": 9,
    }
    answer = await svc.client.post("/email/postmark", json=wrong_types, headers=POSTMARK)
    assert answer.status_code == 200 and answer.json()["action"] == "refused", answer.text
    header_injection = {
        "From": "pm@example.net\r\nBcc: victim@example.net",
        "To": BOT,
        "MessageID": "pm-1\x00@example.net",
        "TextBody": "deploy\x00 it",
        "Headers": [{"Name": "References", "Value": "<a@b>\r\nX-Evil: 1"}, "junk"],
    }
    answer = await svc.client.post("/email/postmark", json=header_injection, headers=POSTMARK)
    assert answer.json()["action"] == "started", answer.text
    record = await svc.app_state.runtime.store.load(answer.json()["thread_id"])
    assert record.events[0].event.text == "deploy\ufffd it"
    for body in (b"[1, 2]", b"{", b"[" * 100_000):  # never a message: held, not retried
        bad = await svc.client.post("/email/postmark", content=body, headers=POSTMARK)
        assert bad.status_code == 403 and bad.json()["action"] == "quarantined", body[:10]
    absurd = {"From": "pm@example.net", "To": BOT, "MessageID": "pm-2@example.net",
              "Headers": [{"Name": "References", "Value": "<r@x> " * 200_000}]}  # fmt: skip
    held = await svc.client.post("/email/postmark", json=absurd, headers=POSTMARK)
    assert held.status_code == 403 and held.json()["action"] == "quarantined"  # no retries


# -- the database down: wait, never quarantine -----------------------------------------------


@pytest.fixture
async def pg_relay(pg_url: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    parts = urlsplit(pg_url)
    relay = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    netloc = f"{parts.username}@{relay.host}:{relay.port}"
    yield urlunsplit(parts._replace(netloc=netloc)), relay
    await relay.cut()


async def test_with_the_database_down_mail_waits_and_is_never_quarantined(
    pg_relay: tuple[str, TcpProxy], llm_server: FakeLLMServer, smtp_sink: Any, dovecot: Any
) -> None:
    url, relay = pg_relay
    llm_server.responder = idle
    settings = email_settings(url, llm_server, smtp_sink.port, dovecot=dovecot)
    async with serve(settings, agents()) as svc:
        fetcher = svc.app_state.channels["email"].state.fetcher
        await fetcher.connected.wait()
        await relay.cut()
        down = await post(svc, good_mail(1))
        assert down.status_code == 503 and down.headers["retry-after"] == "30", down.text
        await dovecot.append("bot", "secret", good_mail(2))
        await eventually(lambda: _true(fetcher.unavailable >= 1), within=30)
        [(_, flags, _)] = await dovecot.fetch_all("bot", "secret")
        assert "\\Seen" not in flags  # left for later, not moved away
        await relay.restore()
        await eventually(lambda: _true(fetcher.processed == 1), within=60)
        assert (await post(svc, good_mail(1))).json()["action"] == "started"
        assert set(await threads_by_author(svc)) == {"good1@example.net", "good2@example.net"}
        assert await Quarantine(svc.app_state.runtime.store.engine).list(status=None) == []
        assert fetcher.held == 0


# -- the parse pool ---------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [0, 1])
async def test_mail_parsed_off_the_loop_is_the_mail_parsed_here(processes: int) -> None:
    from channels.email.parse import parse

    parser = Parser(processes=processes, max_text_chars=1_000)
    try:
        raw = customer_mail("word " * 1_000, Authentication_Results="mx; dkim=pass")
        got: InboundMail = await parser.parse(raw)
        assert got == parse(raw, max_text_chars=1_000)
        with pytest.raises(MailRejected, match="nested"):
            await parser.parse(deep_mail())
    finally:
        await parser.close()


def test_the_cli_lists_shows_retries_and_drops_held_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from typer.testing import CliRunner

    from app.store import Store
    from channels.email.cli import intake
    from tests.test_settings_cli import base_env, relaybot

    db = tmp_path / "intake.db"
    env = base_env(DATABASE_URL=f"sqlite:///{db}", LLM_MODEL="openai/test-model",
                   EMAIL_FROM=BOT, SMTP_HOST="127.0.0.1", SECRET_KEY="e" * 32)  # fmt: skip
    assert relaybot("migrate", cwd=tmp_path, env=env).returncode == 0

    async def hold() -> tuple[int, int]:
        store = Store.from_url(f"sqlite+aiosqlite:///{db}")
        quarantine = Quarantine(store.engine)
        ids = []
        # One that still cannot be read, one that failed for a reason since fixed.
        for raw, reason in ((deep_mail(), "unreadable: nested"), (good_mail(7), "failed: bug")):
            ids.append(
                await quarantine.hold(channel="email", source="imap", reason=reason,
                                      content=raw, size=len(raw), sender="x@example.net")
            )  # fmt: skip
        await store.close()
        return ids[0], ids[1]

    deep, fixed = asyncio.run(hold())
    # The command is the email channel's, found by its entry point:
    listed = relaybot("intake", "list", cwd=tmp_path, env=env)
    assert re.search(rf"{fixed}\s+email\s+imap\s+held\s+1 .* failed: bug", listed.stdout)
    assert re.search(rf"{deep}\s+email\s+imap\s+held\s+1 .* unreadable: nested", listed.stdout)
    # the rest in this process (each new one takes seconds to import the service)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cli = CliRunner()
    shown = cli.invoke(intake, ["show", str(deep), "--content"])
    assert shown.exit_code == 0 and shown.stdout_bytes == deep_mail()
    still = cli.invoke(intake, ["retry", str(deep)])
    assert still.exit_code == 1 and "still cannot be processed" in still.stderr
    retried = cli.invoke(intake, ["retry", str(fixed)])
    assert retried.exit_code == 0, retried.output
    assert re.search(r"processed: started, thread [0-9a-f-]{36}", retried.stdout)
    again = cli.invoke(intake, ["retry", str(fixed)])
    assert again.exit_code == 1 and "is released" in again.stderr
    assert cli.invoke(intake, ["drop", str(deep)]).exit_code == 0
    assert cli.invoke(intake, ["list"]).stdout.count("\n") == 1
    everything = cli.invoke(intake, ["list", "--all"]).stdout
    assert re.search(rf"{deep}\s+email\s+imap\s+dropped\s+2 ", everything)
    assert re.search(rf"{fixed}\s+email\s+imap\s+released\s+1 ", everything)
