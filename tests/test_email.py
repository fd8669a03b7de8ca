"""Email on real servers: mail out through an SMTP server (aiosmtpd), mail in through the
provider webhook or a real IMAP server (Dovecot), decisions by reply and by link, and the
refunds agent across email and Slack."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from agents import deploybot, refunds
from agents.refunds import load_sample
from app.agent import Agent
from tests.conftest import Service, eventually, make_settings, serve
from tests.fakes.http_sink import HttpSink
from tests.fakes.llm_server import FakeLLMServer, act, prompt_text
from tests.fakes.slack_api import FakeSlackAPI
from tests.test_slack import BOB, SECRET, click

INBOUND_TOKEN = "inbound-token-0123456789"
# What our receiving server (authserv-id mx.relay.test) says of Ana's mail: it is hers.
VERIFIED_ANA = "mx.relay.test; dkim=pass header.d=example.net; dmarc=pass header.from=example.net"
BOT = "bot@relay.test"


def customer_mail(
    text: str,
    *,
    sender: str = "ana@example.net",
    to: str = "refunds@relay.test",
    subject: str = "Refund for A-1002",
    message_id: str = "<ana-1@example.net>",
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ana <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(text)
    return bytes(msg)


def refunds_flow(body: dict[str, Any]) -> Any:
    prompt = prompt_text(body)
    if "<issue_refund_result>" in prompt:
        return act("done_for_now", message="Your refund of 149.00 EUR for the tent is on its way.")
    if "denied:" in prompt:
        return act("done_for_now", message="Sorry, we cannot refund this order.")
    if "<look_up_order_result>" not in prompt:
        return act("look_up_order", order_id="A-1002")
    return act("issue_refund", order_id="A-1002", amount="149.00", reason="tent arrived torn")


async def post_mail(svc: Service, raw: bytes, token: str = INBOUND_TOKEN) -> dict[str, Any]:
    response = await svc.client.post(
        "/email/inbound",
        content=raw,
        headers={"authorization": f"Bearer {token}", "content-type": "message/rfc822"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
async def payments() -> AsyncIterator[HttpSink]:
    """The payment provider's webhook, receiving the refunds agent's refunds."""
    sink = await HttpSink().start()
    yield sink
    await sink.stop()


def refund_agents(payments: HttpSink) -> dict[str, Agent]:
    return {
        "refunds": refunds.build(refunds.RefundsSettings(payments_webhook_url=payments.url)),
        "deploybot": deploybot.build(deploybot.DeploybotSettings()),
    }


def email_settings(
    database_url: str, llm: FakeLLMServer, smtp_port: int, dovecot: Any = None, **extra: Any
) -> Any:
    if dovecot is not None:  # read mail over IMAP from this server, as user bot
        extra |= {
            "imap_host": dovecot.host,
            "imap_port": dovecot.port,
            "imap_username": "bot",
            "imap_password": "secret",
            "imap_tls": False,
        }
    return make_settings(
        database_url,
        llm,
        secret_key="e" * 32,
        email_from=extra.pop("email_from", BOT),
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        smtp_username="bot",
        smtp_password="secret",
        email_inbound_token=INBOUND_TOKEN,
        email_agents="refunds@relay.test=refunds",
        email_authserv_id=extra.pop("email_authserv_id", "mx.relay.test"),
        poll_interval=0.2,
        **extra,
    )


async def test_refund_by_email_approved_in_slack_answered_in_the_thread(
    database_url: str,
    llm_server: FakeLLMServer,
    slack: FakeSlackAPI,
    smtp_sink: Any,
    payments: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFUNDS_SLACK_APPROVAL_CHANNEL", "CAPPROVE")
    monkeypatch.setenv("REFUNDS_SLACK_APPROVERS", BOB)
    llm_server.responder = refunds_flow
    agents = refund_agents(payments)
    settings = email_settings(
        database_url,
        llm_server,
        smtp_sink.port,
        slack_bot_token="xoxb-test",
        slack_signing_secret=SECRET,
        slack_api_url=slack.url,
    )
    async with serve(settings, agents) as svc:
        await load_sample(svc.app_state.runtime.store.engine)
        outcome = await post_mail(
            svc,
            customer_mail(
                "Hi, my tent A-1002 arrived torn. Refund please.\n\nAna",
                Authentication_Results=VERIFIED_ANA,
            ),
        )
        assert outcome["action"] == "started"
        await eventually(
            lambda: _true(any(c.get("blocks") for c in slack.called("chat.postMessage")))
        )
        request = next(c for c in slack.called("chat.postMessage") if c.get("blocks"))
        assert request["channel"] == "CAPPROVE" and request.get("thread_ts") is None
        assert "`issue_refund`" in json.dumps(request["blocks"])
        assert payments.calls == []
        await click(svc, BOB, "relaybot_approve", {**request, "channel": "CAPPROVE"})
        await eventually(lambda: _true(len(smtp_sink.messages) == 1))
        await eventually(lambda: _true(len(slack.called("chat.update")) == 1))
    assert [(c["order_id"], c["amount_cents"]) for c in payments.calls] == [("A-1002", 14900)]
    [mail] = smtp_sink.messages
    msg = mail.message
    assert mail.rcpt_tos == ["ana@example.net"] and msg["To"] == "ana@example.net"
    assert msg["Subject"] == "Re: Refund for A-1002"
    assert msg["In-Reply-To"] == "<ana-1@example.net>"
    assert msg["References"] == "<ana-1@example.net>"
    assert re.fullmatch(
        r"<[0-9a-f-]{36}\.\d+\.[a-z0-9]{16}@relay\.test>", msg["Message-ID"].strip()
    )
    assert msg["Reply-To"].startswith("bot+") and msg["Reply-To"].endswith("@relay.test")
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert "refund of 149.00 EUR" in text
    assert "refund of 149.00 EUR" in msg.get_body(preferencelist=("html",)).get_content()


async def _true(value: bool) -> bool:
    return value


def deploy_flow(body: dict[str, Any]) -> Any:
    prompt = prompt_text(body)
    if "<deploy_backend_result>" in prompt or "denied:" in prompt:
        return act("done_for_now", message="finished")
    if "<list_git_tags_result>" not in prompt:
        return act("list_git_tags")
    return act("deploy_backend", tag="v1.2.0")


@pytest.fixture
async def mail_svc(
    database_url: str,
    llm_server: FakeLLMServer,
    smtp_sink: Any,
    dovecot: Any,
    git_repo: Path,
    deploy_hook: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Service]:
    """deploybot with email approvers, mail in over IMAP from Dovecot and by webhook."""
    monkeypatch.setenv("DEPLOYBOT_EMAIL_APPROVERS", "ops@relay.test")
    llm_server.responder = deploy_flow
    agents: dict[str, Agent] = {
        "deploybot": deploybot.build(
            deploybot.DeploybotSettings(repo=git_repo, webhook_url=deploy_hook.url)
        ),
    }
    settings = email_settings(
        database_url,
        llm_server,
        smtp_sink.port,
        dovecot=dovecot,
        email_unauthorized="reply",
    )
    async with serve(settings, agents) as svc:
        yield svc


async def approval_mail(svc: Service, smtp_sink: Any) -> tuple[str, Any]:
    created = await svc.client.post("/thread", json={"message": "deploy the latest backend"})
    tid = created.json()["thread_id"]
    await svc.wait_for(tid, "awaiting_approval")
    await eventually(lambda: _true(len(smtp_sink.messages) >= 1))
    return tid, smtp_sink.messages[0].message


def reply_to(original: Any, text: str, *, sender: str = "ops@relay.test", message_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ops <{sender}>"
    msg["To"] = original["Reply-To"]
    msg["Subject"] = f"Re: {original['Subject']}"
    msg["Message-ID"] = message_id
    msg["In-Reply-To"] = original["Message-ID"]
    msg["References"] = original["Message-ID"]
    domain = sender.rpartition("@")[2]  # as our receiving server stamps what it verified
    msg["Authentication-Results"] = f"mx.relay.test; dkim=pass header.d={domain}; dmarc=pass"
    quoted = "\n".join(
        f"> {line}" for line in original.get_body(("plain",)).get_content().splitlines()
    )
    msg.set_content(
        f"{text}\n\nOps team\n--\nSent from my phone\n\nOn Tue, relaybot wrote:\n{quoted}\n"
    )
    return bytes(msg)


async def test_approval_email_then_a_reply_over_imap_resumes_the_thread(
    mail_svc: Service, smtp_sink: Any, dovecot: Any, deploy_hook: HttpSink
) -> None:
    tid, request = await approval_mail(mail_svc, smtp_sink)
    assert request["To"] == "ops@relay.test"
    assert request["Subject"] == "Approval needed: deploy_backend (deploybot)"
    assert request["Message-ID"].strip().startswith(f"<{tid}.")
    token = request["Reply-To"].split("+", 1)[1].split("@")[0]
    assert len(f"bot+{token}") <= 64
    text = request.get_body(("plain",)).get_content()
    assert "tag: v1.2.0" in text and "/email/decide/" in text
    assert (
        '<a href="http://relaybot.test/email/decide/' in request.get_body(("html",)).get_content()
    )
    await dovecot.append(
        "bot", "secret", reply_to(request, "Approve", message_id="<ops-1@relay.test>")
    )
    thread = await mail_svc.wait_for(tid, "done")
    decision = next(e for e in thread["events"] if e["type"] == "human_response")
    request_event = next(e for e in thread["events"] if e["type"] == "approval_requested")
    assert decision["data"] == {
        "kind": "approval",
        "approved": True,
        "author": "ops@relay.test",
        "channel": "email",
        "ref": "<ops-1@relay.test>",
        "request_seq": request_event["seq"],
        "evidence": {  # who decided, how it was proven, and exactly what
            "principal": "email:ops@relay.test",
            "via": "reply token",
            "details": {
                "message_id": "<ops-1@relay.test>",
                "verdict": "pass",  # our server's DKIM/DMARC verdict on the sender
                "dkim": "pass",
                "dmarc": "pass",
                "authserv_id": "mx.relay.test",
            },
            "digest": request_event["data"]["digest"],
        },
    }
    assert [c["tag"] for c in deploy_hook.calls] == ["v1.2.0"]
    # Processed mail is flagged, so a restart does not read it again.
    [(_, flags, _)] = await dovecot.fetch_all("bot", "secret")
    assert "\\Seen" in flags


async def test_forged_expired_and_reused_replies_change_nothing(
    mail_svc: Service, smtp_sink: Any, deploy_hook: HttpSink
) -> None:
    tid, request = await approval_mail(mail_svc, smtp_sink)
    forged = await post_mail(
        mail_svc,
        reply_to(request, "approve", sender="mallory@evil.test", message_id="<m-1@evil.test>"),
    )
    assert forged["action"] == "refused" and "may not answer" in forged["reason"]
    await eventually(lambda: _true(len(smtp_sink.messages) == 2))
    notice = smtp_sink.messages[1].message
    assert notice["To"] == "mallory@evil.test" and "changed nothing" in notice.get_content()
    expired = reply_to(request, "approve", message_id="<ops-x@relay.test>").replace(
        request["Reply-To"].encode(), b"bot+" + _expired_token(tid).encode() + b"@relay.test"
    )
    refused = await post_mail(mail_svc, expired)
    assert refused["action"] == "refused" and "expired" in refused["reason"]
    assert (await mail_svc.client.get(f"/thread/{tid}")).json()["status"] == "awaiting_approval"
    rejected = await post_mail(
        mail_svc, reply_to(request, "Reject: not on a Friday", message_id="<ops-2@relay.test>")
    )
    assert rejected["action"] == "decided"
    again = await post_mail(mail_svc, reply_to(request, "approve", message_id="<ops-3@relay.test>"))
    assert again["action"] == "refused" and "already decided" in again["reason"]
    duplicate = await post_mail(
        mail_svc, reply_to(request, "approve", message_id="<ops-3@relay.test>")
    )
    assert duplicate["action"] == "duplicate"
    thread = await mail_svc.wait_for(tid, "done")
    assert deploy_hook.calls == []
    decision = next(e for e in thread["events"] if e["type"] == "human_response")
    assert decision["data"]["comment"].startswith("not on a Friday")  # the rest follows


def _expired_token(thread_id: str) -> str:
    from channels.email.tokens import reply_token

    return reply_token("e" * 32, thread_id, 5, now=1_000_000_000)


async def test_link_pages_show_on_get_and_act_once_on_post(
    mail_svc: Service, smtp_sink: Any, deploy_hook: HttpSink
) -> None:
    tid, request = await approval_mail(mail_svc, smtp_sink)
    text = request.get_body(("plain",)).get_content()
    approve = re.search(r"Approve: http://relaybot\.test(/email/decide/\S+)", text).group(1)  # type: ignore[union-attr]
    for _ in range(3):  # mail scanners open links: looking acts on nothing
        page = await mail_svc.client.get(approve)
        assert page.status_code == 200 and "deploy_backend" in page.text and "<form" in page.text
    assert (await mail_svc.client.get(f"/thread/{tid}")).json()["status"] == "awaiting_approval"
    done = await mail_svc.client.post(approve)
    assert done.status_code == 200 and "Approved" in done.text
    used = await mail_svc.client.post(approve)
    assert used.status_code == 410 and "works once" in used.text
    forged = await mail_svc.client.get(approve[:-3] + "abc")
    assert forged.status_code == 403
    await mail_svc.wait_for(tid, "done")
    assert len(deploy_hook.calls) == 1


async def test_html_only_non_utf8_and_a_large_attachment_start_threads(
    mail_svc: Service, llm_server: FakeLLMServer
) -> None:
    html = EmailMessage()
    html["From"], html["To"], html["Subject"] = "a@x.test", BOT, "Deploy"
    html["Message-ID"] = "<h-1@x.test>"
    html.set_content("<p>Please <b>deploy</b> the backend</p>", subtype="html")
    latin = (
        b"From: b@x.test\r\nTo: bot@relay.test\r\nSubject: Gr\xfc\xdfe\r\n"
        b"Message-ID: <l-1@x.test>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nBitte das Backend ausrollen, gr\xfc\xdfe\r\n"
    )
    big = EmailMessage()
    big["From"], big["To"], big["Subject"] = "c@x.test", BOT, "Logs"
    big["Message-ID"] = "<big-1@x.test>"
    big.set_content("Logs attached, please deploy.")
    big.add_attachment(
        b"\x01" * 20_000_000, maintype="application", subtype="zip", filename="logs.zip"
    )
    for raw in (bytes(html), latin, bytes(big)):
        assert (await post_mail(mail_svc, raw))["action"] == "started"
    expected = [
        "Please **deploy** the backend",  # HTML-only, as text
        "Bitte das Backend ausrollen, grüße",  # ISO-8859-1, decoded
        "[Attachments, not opened: logs.zip (application/zip, 20.0 MB)]",
    ]

    async def all_seen() -> bool:
        prompts = "\n".join(llm_server.prompts())
        return all(text in prompts for text in expected)

    await eventually(all_seen)


async def test_postmark_inbound_format(mail_svc: Service, llm_server: FakeLLMServer) -> None:
    import base64

    payload = {
        "From": "dana@x.test",
        "To": BOT,
        "Subject": "Deploy please",
        "MessageID": "pm-1@x.test",
        "TextBody": "Deploy the backend.",
        "HtmlBody": "",
        "Headers": [],
        "Attachments": [{"Name": "a.txt", "ContentType": "text/plain", "ContentLength": 10}],
    }
    bad = await mail_svc.client.post("/email/postmark", json=payload)
    assert bad.status_code == 401
    auth = "Basic " + base64.b64encode(f"postmark:{INBOUND_TOKEN}".encode()).decode()
    ok = await mail_svc.client.post(
        "/email/postmark", json=payload, headers={"authorization": auth}
    )
    assert ok.status_code == 200 and ok.json()["action"] == "started"
    again = await mail_svc.client.post(
        "/email/postmark", json=payload, headers={"authorization": auth}
    )
    assert again.json()["action"] == "duplicate"


async def test_imap_dropped_during_idle_loses_and_doubles_nothing(
    mail_svc: Service, dovecot: Any, llm_server: FakeLLMServer
) -> None:
    def mail(n: int) -> bytes:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = f"u{n}@x.test", BOT, f"Request {n}"
        msg["Message-ID"] = f"<idle-{n}@x.test>"
        msg.set_content(f"deploy request number {n}")
        return bytes(msg)

    await dovecot.append("bot", "secret", mail(1))
    store = mail_svc.app_state.runtime.store
    await eventually(lambda: _count(store, 1))
    await _asyncio_sleep(0.5)  # the fetcher is idling now
    dovecot.kick("bot")
    await dovecot.append("bot", "secret", mail(2))
    await dovecot.append("bot", "secret", mail(3))
    await eventually(lambda: _count(store, 3), within=20)
    await _asyncio_sleep(0.5)
    assert len(await store.list_threads()) == 3


async def _count(store: Any, n: int) -> bool:
    return len(await store.list_threads()) >= n


async def _asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_customer_email_to_approval_email_to_reply_over_imap_to_threaded_outcome(
    database_url: str,
    llm_server: FakeLLMServer,
    smtp_sink: Any,
    dovecot: Any,
    payments: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole email loop, as a customer and a manager see it in their mail clients."""
    monkeypatch.setenv("REFUNDS_EMAIL_APPROVERS", "manager@relay.test")
    llm_server.responder = refunds_flow
    agents = refund_agents(payments)
    settings = email_settings(
        database_url,
        llm_server,
        smtp_sink.port,
        dovecot=dovecot,
    )
    async with serve(settings, agents) as svc:
        await load_sample(svc.app_state.runtime.store.engine)
        ask = customer_mail(
            "My tent A-1002 arrived torn. Refund please.\n\nAna",
            Authentication_Results=VERIFIED_ANA,
        )
        await dovecot.append("bot", "secret", ask)
        await eventually(lambda: _true(len(smtp_sink.messages) == 1))
        approval = smtp_sink.messages[0].message
        assert approval["To"] == "manager@relay.test"
        assert approval["Subject"] == "Approval needed: issue_refund (refunds)"
        assert "amount: 149.00" in approval.get_body(("plain",)).get_content()
        assert payments.calls == []
        await dovecot.append(
            "bot",
            "secret",
            reply_to(approval, "yes", sender="manager@relay.test", message_id="<mgr-1@relay.test>"),
        )
        await eventually(lambda: _true(len(smtp_sink.messages) == 2))
    assert [(c["order_id"], c["amount_cents"]) for c in payments.calls] == [("A-1002", 14900)]
    outcome = smtp_sink.messages[1].message
    assert smtp_sink.messages[1].rcpt_tos == ["ana@example.net"]
    assert outcome["Subject"] == "Re: Refund for A-1002"
    assert outcome["In-Reply-To"] == "<ana-1@example.net>"
    assert outcome["References"] == "<ana-1@example.net>"
    assert "refund of 149.00 EUR" in outcome.get_body(("plain",)).get_content()
    # Nothing was read twice: two messages in the mailbox, both processed once and flagged.
    fetched = await dovecot.fetch_all("bot", "secret")
    assert len(fetched) == 2 and all("\\Seen" in flags for _, flags, _ in fetched)
