"""Email pieces that need no server: tokens, reading messages, decisions."""

from __future__ import annotations

import time
import uuid
from email.message import EmailMessage

import pytest

from channels.email.parse import parse
from channels.email.tokens import (
    LinkSigner,
    TokenError,
    plus_address,
    read_reply_token,
    reply_token,
    token_from_address,
)

SECRET = "s" * 32
THREAD = str(uuid.uuid4())


def test_reply_tokens_fit_an_address_and_round_trip() -> None:
    token = reply_token(SECRET, THREAD, 17)
    address = plus_address("bot@example.com", token)
    assert len(address.partition("@")[0]) <= 64
    assert token_from_address(address) == token
    target = read_reply_token(SECRET, token.upper(), max_age_days=30)  # case does not matter
    assert (target.thread_id, target.request_seq) == (THREAD, 17)


def test_forged_and_expired_reply_tokens_are_refused() -> None:
    token = reply_token(SECRET, THREAD, 3)
    thread, _, day, mac = token.split(".")
    for forged in (f"{thread}.4.{day}.{mac}", reply_token("x" * 32, THREAD, 3), "garbage"):
        with pytest.raises(TokenError):
            read_reply_token(SECRET, forged, max_age_days=30)
    old = reply_token(SECRET, THREAD, 3, now=time.time() - 40 * 86_400)
    with pytest.raises(TokenError) as err:
        read_reply_token(SECRET, old, max_age_days=30)
    assert err.value.reason == "expired"


def test_links_are_signed_and_expire() -> None:
    signer = LinkSigner(SECRET, max_age=3600)
    link = signer.sign(THREAD, 5, "approve")
    assert signer.read(link) == {"t": THREAD, "s": 5, "d": "approve"}
    with pytest.raises(TokenError):
        LinkSigner("y" * 32, max_age=3600).read(link)
    with pytest.raises(TokenError) as err:
        LinkSigner(SECRET, max_age=-1).read(link)
    assert err.value.reason == "expired"


def message(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Bob <Bob@Example.com>")
    msg["To"] = headers.pop("To", "bot@example.com")
    msg["Subject"] = headers.pop("Subject", "Re: Approval needed")
    msg["Message-ID"] = headers.pop("Message_ID", "<reply-1@example.com>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return msg


def test_a_reply_loses_its_quoted_history_and_signature() -> None:
    msg = message(
        In_Reply_To="<t.5.email@example.com>", References="<root@x> <t.5.email@example.com>"
    )
    msg.set_content(
        "Reject: the tag is wrong\n\nThanks,\nBob\n--\nBob Smith | Ops\n\n"
        "On Mon, Nov 23, 2026 at 10:00 AM relaybot <bot@example.com> wrote:\n"
        "> Approval needed: deploy_backend\n> Reply approve or reject.\n"
    )
    mail = parse(bytes(msg))
    assert mail.text == "Reject: the tag is wrong\n\nThanks,\nBob"  # the sign-off is theirs
    assert mail.sender == "bob@example.com" and mail.recipients == ["bot@example.com"]
    assert mail.earlier == ["<t.5.email@example.com>", "<t.5.email@example.com>", "<root@x>"]
    assert mail.message_id == "<reply-1@example.com>" and not mail.auth_failed


def test_html_only_mail_becomes_text() -> None:
    msg = message()
    msg.set_content(
        "<html><body><p>Please <b>refund</b> order <i>A-1001</i>.</p></body></html>", subtype="html"
    )
    assert parse(bytes(msg)).text == "Please **refund** order _A-1001_."


def test_a_non_utf8_charset_is_decoded() -> None:
    raw = (
        b"From: anna@example.com\r\nTo: bot@example.com\r\nSubject: Erstattung\r\n"
        b"Message-ID: <l1@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "Bitte erstatten Sie die Gebühr für Bestellung Ä-7.\r\n".encode("latin-1")
    )
    assert parse(raw).text == "Bitte erstatten Sie die Gebühr für Bestellung Ä-7."


def test_a_large_attachment_is_listed_not_loaded() -> None:
    msg = message()
    msg.set_content("Receipt attached.")
    msg.add_attachment(
        b"\x00" * 20_000_000, maintype="application", subtype="pdf", filename="receipt.pdf"
    )
    [attachment] = parse(bytes(msg)).attachments
    assert (attachment.name, attachment.content_type) == ("receipt.pdf", "application/pdf")
    assert 19_900_000 < attachment.size < 20_100_000


def test_failed_authentication_results_are_noticed() -> None:
    msg = message(Authentication_Results="mx.example.com; dkim=fail header.d=example.com; spf=pass")
    msg.set_content("approve")
    assert parse(bytes(msg)).auth_failed
