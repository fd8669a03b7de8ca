"""Hostile mail, read without a server (issue 13): whatever the bytes, ``parse`` returns a
message whose text is safe to store, or refuses it with ``MailRejected``; never another
error, never unbounded work. Identifiers too long to key are keyed by digest, consistently.
"""

from __future__ import annotations

import hashlib
import json
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.email.mime import MAX_CONTAINERS, MAX_HEADER_FIELDS
from channels.email.parse import InboundMail, MailRejected, parse, safe_id
from channels.email.postmark import parse_postmark


def unsafe(text: str) -> bool:
    return "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def strings(mail: InboundMail) -> list[str]:
    return [
        mail.message_id or "",
        mail.sender,
        *mail.recipients,
        mail.subject,
        *mail.in_reply_to,
        *mail.references,
        mail.text,
        mail.body,
        *(f"{a.name} {a.content_type}" for a in mail.attachments),
        *mail.auth_results,
        mail.thread_index or "",
    ]


def parsed_or_rejected(raw: bytes, postmark: bool = False, **kwargs: int) -> InboundMail | None:
    try:
        if postmark:
            mail = parse_postmark(raw, max_text_chars=kwargs.get("max_text_chars", 1_000))
        else:
            mail = parse(raw, **kwargs)
    except MailRejected as exc:
        assert exc.reason
        return None
    for text in strings(mail):
        assert not unsafe(text), text
    return mail


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_any_bytes_are_read_or_refused_cleanly(raw: bytes) -> None:
    parsed_or_rejected(raw)


HEADER_NAMES = st.sampled_from(
    [
        "From", "To", "Cc", "Delivered-To", "Subject", "Message-ID", "In-Reply-To",
        "References", "Authentication-Results", "Thread-Index", "Content-Type",
        "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version", "X-Other",
    ]
)  # fmt: skip
VALUE_PIECES = st.sampled_from(
    [
        "a@b.test", "<id@x>", "Ana <ana@x.test>", "=?utf-8?b?R3LDvMOfZQ==?=", "=?x?q?=FF_a?=",
        "=?utf-8?b?###?=", "text/plain", "text/html", "multipart/mixed", "multipart/related",
        "multipart/alternative", "message/rfc822", "; boundary=B", "; charset=utf-8",
        "; charset=base64", "; charset=idna", "; charset=utf-16", '; name="x.pdf"',
        "attachment", "inline", "base64", "quoted-printable", "x-uuencode", "8bit", "\x00",
        "\udcff", ",", ";", '"', "(", "\\", " ", "bot+töken@relay.test", "<" + "m" * 300 + ">",
    ]
)  # fmt: skip
BODY_PIECES = st.sampled_from(
    [
        "--B\r\n", "--B--\r\n", "\r\n", "hello\r\n", "> quoted\r\n", "<p>hi</p>", "=E4=\r\n",
        "aGVsbG8=\r\n", "begin 644 x\r\n#86)C\r\n`\r\nend\r\n", "\x00", "<![if x", "Content-Type: ",
        "multipart/mixed; boundary=B\r\n\r\n",
    ]
)  # fmt: skip


@st.composite
def mime(draw: st.DrawFn) -> bytes:
    """A message from random headers (real names, values made of pieces that matter to a
    parser) and a body of MIME-ish pieces and random text, in random bytes encodings."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(HEADER_NAMES)
        pieces = draw(st.lists(VALUE_PIECES | st.text(max_size=20), max_size=5))
        lines.append(f"{name}: {''.join(pieces)}")
    body = "".join(draw(st.lists(BODY_PIECES | st.text(max_size=40), max_size=20)))
    text = "\r\n".join(lines) + "\r\n\r\n" + body
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, "surrogateescape" if encoding == "utf-8" else "replace")


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mime(), st.integers(1, 200))
def test_any_mime_is_read_or_refused_cleanly(raw: bytes, limit: int) -> None:
    mail = parsed_or_rejected(raw, max_text_chars=limit)
    if mail is not None:  # the text kept is bounded, its markers aside
        assert len(mail.body) <= limit + 120


ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates too
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
POSTMARK = st.fixed_dictionaries(
    {},
    optional={
        name: JSON | ANY_TEXT
        for name in ("From", "To", "Cc", "Subject", "MessageID", "TextBody", "HtmlBody")
    }
    | {
        "Headers": JSON
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "Name": st.sampled_from(["References", "In-Reply-To", "X"]) | JSON,
                    "Value": VALUE_PIECES | ANY_TEXT | JSON,
                },
            )
            | JSON,
            max_size=4,
        ),
        "Attachments": JSON
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "Name": ANY_TEXT | JSON,
                    "ContentType": st.sampled_from(["text/plain", "a b", "x/y; z"]) | JSON,
                    "Content": st.sampled_from(["aGk=", "!!", ""]) | JSON,
                },
            ),
            max_size=3,
        ),
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(POSTMARK | JSON)
def test_postmark_json_of_any_shape_is_read_or_refused_cleanly(data: object) -> None:
    parsed_or_rejected(json.dumps(data).encode(), postmark=True)


# -- structure --------------------------------------------------------------------------------


def nested(depth: int, kind: str = "multipart") -> bytes:
    head = b"From: a@x.test\r\nTo: bot@relay.test\r\nMessage-ID: <deep@x.test>\r\n"
    if kind == "multipart":
        level = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
        levels = b"".join(level % (i, i) for i in range(depth))
    else:
        levels = b"Content-Type: message/rfc822\r\n\r\n" * depth
    return head + levels + b"Content-Type: text/plain\r\n\r\nhi\r\n"


@pytest.mark.parametrize("kind", ["multipart", "message"])
def test_a_thousand_nested_parts_are_a_clear_rejection(kind: str) -> None:
    with pytest.raises(MailRejected, match="nested"):
        parse(nested(1000, kind))
    assert parse(nested(20, kind)).sender == "a@x.test"  # a deep but sane one is read


def test_absurd_header_counts_and_mime_headers_are_rejected() -> None:
    fields = b"".join(b"X-N: %d\r\n" % i for i in range(MAX_HEADER_FIELDS + 1))
    with pytest.raises(MailRejected, match="header fields"):
        parse(b"From: a@x.test\r\n" + fields + b"\r\nhi")
    params = b"; a=b" * 5_000  # every read of a Content-Type parses its parameters
    with pytest.raises(MailRejected, match="content-type header"):
        parse(b"From: a@x.test\r\nContent-Type: text/plain" + params + b"\r\n\r\nhi")
    containers = b"".join(
        b"--B\r\nContent-Type: multipart/mixed; boundary=C%d\r\n\r\n--C%d--\r\n" % (i, i)
        for i in range(MAX_CONTAINERS + 1)
    )
    wide = b"From: a@x.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" + containers
    with pytest.raises(MailRejected, match="nested MIME parts"):
        parse(wide)


def test_broken_boundaries_and_odd_encodings_still_read() -> None:
    raw = (
        b"From: a@x.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain; charset=base64\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"aGVsbG8gdGhlcmU=\r\n--C--\r\n"
    )
    assert parse(raw).text == "hello there"
    # 8-bit content whose charset no codec takes: the stdlib's own reading of it raises.
    raw = (
        b"From: a@x.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\nhi\r\n"
        b'--B\r\nContent-Type: text/csv; charset="utf-8\x00"\r\n\r\n\xc3\xa4\xff,1\r\n--B--\r\n'
    )
    [listed] = parse(raw).attachments
    assert (listed.content_type, listed.size) == ("text/csv", 5)


# -- text and identifiers ---------------------------------------------------------------------


def mail(body: str = "hello", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Ana <ana@x.test>")
    msg["To"] = headers.pop("To", "bot@relay.test")
    msg["Message-ID"] = headers.pop("Message_ID", "<m-1@x.test>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return bytes(msg)


def test_nul_and_undecodable_bytes_become_replacement_characters() -> None:
    raw = (
        b"From: a@x.test\r\nSubject: a\x00b \xff\r\nMessage-ID: <n@x>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nfirst\x00line \xed\xa0\x80\r\n"
    )
    got = parse(raw)
    assert got.subject == "a\ufffdb \xff"  # 8-bit header bytes that are not UTF-8: Latin-1
    assert got.body == "first\ufffdline \ufffd\ufffd\ufffd"


def test_headers_in_utf8_and_encoded_words_are_decoded() -> None:
    raw = "From: Jürgen <j@x.test>\r\nSubject: Grüße =?utf-8?q?und_K=C3=BCsse?=\r\n\r\nhi"
    assert parse(raw.encode()).subject == "Grüße und Küsse"


def test_long_and_unprintable_message_ids_are_keyed_by_digest_everywhere() -> None:
    long_id = "<" + "x" * 600 + "@example.test>"
    key = safe_id(long_id)
    assert key == f"<sha256:{hashlib.sha256(long_id.encode()).hexdigest()}@digest>"
    raw = (
        f"From: a@x.test\r\nMessage-ID: {long_id}\r\nIn-Reply-To: {long_id}\r\n"
        f"References: <a@b>\r\n {long_id}\r\n\r\nhi"
    )
    got = parse(raw.encode())
    assert got.message_id == key and got.in_reply_to == [key]
    assert got.references == ["<a@b>", key] and got.earlier == [key, key, "<a@b>"]
    with_nul = parse(b"From: a@x.test\r\nMessage-ID: <a\x00b@x.test>\r\n\r\nhi")
    assert with_nul.message_id == safe_id("<a\x00b@x.test>") != "<a\x00b@x.test>"
    assert parse(mail(Message_ID="<short@x.test>")).message_id == "<short@x.test>"


def test_the_text_kept_is_cut_with_a_visible_marker() -> None:
    got = parse(mail("word " * 30_000), max_text_chars=1_000)
    assert got.body.startswith("word word") and len(got.body) < 1_100
    assert got.body.endswith("[… 149,001 more characters not kept]")  # with set_content's \n
    assert got.text.endswith("[… 149,001 more characters not kept]")
    html = EmailMessage()
    html["From"] = "a@x.test"
    html.set_content("<p>" + "<b>x</b> " * 10_000 + "</p>", subtype="html")
    cut = parse(bytes(html), max_text_chars=1_000)
    assert cut.body.endswith("more characters of HTML not kept]")
    assert "more characters not kept]" in cut.body


def test_a_huge_recipient_list_is_read_in_part() -> None:
    to = ",\r\n ".join(f"User {i} <u{i}@example.test>" for i in range(20_000))
    got = parse(f"From: a@x.test\r\nTo: bot@relay.test, {to}\r\n\r\nhi".encode())
    assert got.recipients[0] == "bot@relay.test" and 100 < len(got.recipients) < 1_000
