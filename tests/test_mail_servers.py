"""The real mail servers the email-channel tests run against: Dovecot (IMAP) and an SMTP sink."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from typing import Any

import aioimaplib
import aiosmtplib
import pytest

from tests.fakes.mail_servers import Dovecot, SmtpSink, dovecot, smtp_sink

__all__ = ["dovecot", "smtp_sink"]  # the fixtures, imported for these tests


def make_message(subject: str, body: str = "Hello.\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.test>"
    msg["To"] = "bot@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.test>"
    msg.set_content(body)
    return msg


async def test_smtp_with_auth_reaches_the_sink(smtp_sink: SmtpSink) -> None:
    msg = make_message("Deploy request", "Please deploy — now.\n")
    await aiosmtplib.send(
        msg,
        hostname=smtp_sink.host,
        port=smtp_sink.port,
        username="bot",
        password="secret",
        start_tls=False,
        use_tls=False,
        timeout=5,
    )
    [got] = await smtp_sink.wait_for(1)
    assert got.mail_from == "alice@example.test"
    assert got.rcpt_tos == ["bot@example.test"]
    assert got.login == "bot"
    assert got.message["Subject"] == "Deploy request"
    assert got.message.get_content().rstrip() == "Please deploy — now."
    assert b"Subject: Deploy request" in got.raw
    assert smtp_sink.received == [got.envelope]


async def test_smtp_sink_refuses_without_auth_or_with_a_wrong_password(
    smtp_sink: SmtpSink,
) -> None:
    msg = make_message("No auth")
    kwargs: dict[str, Any] = {
        "hostname": smtp_sink.host,
        "port": smtp_sink.port,
        "start_tls": False,
    }
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await aiosmtplib.send(msg, **kwargs)
    assert refused.value.code == 530
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await aiosmtplib.send(msg, username="bot", password="wrong", **kwargs)
    assert smtp_sink.messages == []
    assert smtp_sink.auth_failures >= 1  # aiosmtplib tries PLAIN, then LOGIN


async def test_smtp_sink_scripted_refusal_then_acceptance(smtp_sink: SmtpSink) -> None:
    smtp_sink.responses.append("451 4.3.0 try again later")
    kwargs: dict[str, Any] = {
        "hostname": smtp_sink.host,
        "port": smtp_sink.port,
        "username": "bot",
        "password": "secret",
        "start_tls": False,
    }
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await aiosmtplib.send(make_message("First try"), **kwargs)
    assert refused.value.code == 451
    await aiosmtplib.send(make_message("Second try"), **kwargs)
    [got] = await smtp_sink.wait_for(1)
    assert got.message["Subject"] == "Second try"


async def test_smtp_sink_without_auth_and_wait_for_times_out() -> None:
    async with SmtpSink() as sink:
        with pytest.raises(AssertionError, match="expected 1 message"):
            await sink.wait_for(1, timeout=0.05)
        waiting = asyncio.create_task(sink.wait_for(2))
        for n in range(2):
            await aiosmtplib.send(
                make_message(f"m{n}"), hostname=sink.host, port=sink.port, start_tls=False
            )
        got = await waiting
        assert [m.message["Subject"] for m in got] == ["m0", "m1"]
        assert got[0].login is None


async def test_append_then_fetch(dovecot: Dovecot) -> None:
    raw = make_message("Appended").as_bytes()
    uid = await dovecot.append("bot", "secret", raw, flags=["\\Seen"])
    uid2 = await dovecot.append("bot", "secret", make_message("Second").as_bytes())
    assert (uid, uid2) == (1, 2)
    got = await dovecot.fetch_all("bot", "secret")
    assert [(u, f) for u, f, _ in got] == [(1, {"\\Seen"}), (2, set())]
    assert got[0][2] == raw.replace(b"\n", b"\r\n")  # as_bytes() ends lines with LF


async def test_users_added_while_running_and_other_mailboxes(dovecot: Dovecot) -> None:
    dovecot.add_user("carol", "pw with spaces")
    await dovecot.create_mailbox("carol", "pw with spaces", "Sent")
    await dovecot.append("carol", "pw with spaces", make_message("Mine").as_bytes(), "Sent")
    [(uid, _, raw)] = await dovecot.fetch_all("carol", "pw with spaces", "Sent")
    assert uid == 1 and b"Subject: Mine" in raw
    assert await dovecot.fetch_all("carol", "pw with spaces") == []
    assert await dovecot.fetch_all("bot", "secret") == []
    imap = aioimaplib.IMAP4(host=dovecot.host, port=dovecot.port, timeout=5)
    await imap.wait_hello_from_server()
    assert (await imap.login("carol", "wrong")).result == "NO"
    await imap.logout()


async def test_idle_gets_exists_push_on_append(dovecot: Dovecot) -> None:
    await dovecot.append("bot", "secret", make_message("Before").as_bytes())
    imap = await dovecot.client("bot", "secret")
    select = await imap.select("INBOX")
    assert select.result == "OK" and b"1 EXISTS" in select.lines
    idle = await imap.idle_start(timeout=10)
    await dovecot.append("bot", "secret", make_message("During IDLE").as_bytes())
    push = await imap.wait_server_push(timeout=5)
    assert b"2 EXISTS" in push, push
    imap.idle_done()
    assert (await asyncio.wait_for(idle, 5)).result == "OK"
    await imap.logout()


async def test_kick_drops_an_idle_connection(dovecot: Dovecot) -> None:
    lost = asyncio.Event()
    imap = aioimaplib.IMAP4(
        host=dovecot.host, port=dovecot.port, timeout=5, conn_lost_cb=lambda _exc: lost.set()
    )
    await imap.wait_hello_from_server()
    await imap.login("bot", "secret")
    await imap.select("INBOX")
    await imap.idle_start(timeout=10)
    assert dovecot.connections("bot") == 1
    dovecot.kick("bot")
    await asyncio.wait_for(lost.wait(), 5)
    push = await imap.wait_server_push(timeout=1)
    assert any(b"BYE" in line for line in push), push
    for _ in range(100):  # Dovecot's count drops once the imap process is gone
        if dovecot.connections("bot") == 0:
            break
        await asyncio.sleep(0.02)
    assert dovecot.connections("bot") == 0
    dovecot.kick("bot")  # nobody left: not an error
