"""The reply's own words (``reply_text``) and the decision they make (``read_decision``).

The corpus in fixtures/replies has one body per mail client shape and language, each with a
slot for the reply and a quoted request that itself says "approve", "reject", "yes" or "no":
every decision is checked in every shape, so a word read from the quote would show.
"""

# The corpus and the tables are in many scripts on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from pathlib import Path

import html2text
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mailparser_reply.constants import MAIL_LANGUAGES

from channels.email.decide import Decided, DecisionWords, Unclear, read_decision
from channels.email.quotes import LANGUAGES
from channels.email.reply import MAX_CHARS, reply_text

CORPUS = Path(__file__).parent / "fixtures" / "replies"
WORDS = DecisionWords.default()
# Each language's own words, as a team would add them in its config.
LOCAL: dict[str, tuple[list[str], list[str]]] = {
    "de": (["ja"], ["nein"]),
    "fr": (["oui"], ["non"]),
    "es": (["sí"], ["rechazado", "rechazar"]),
    "it": (["sì"], ["respinto"]),
    "nl": (["ja"], ["nee"]),
    "pt": (["sim"], ["não"]),
    "sv": (["ja"], ["nej"]),
    "da": (["ja"], ["nej"]),
    "pl": (["tak"], ["nie"]),
    "cs": (["ano"], ["ne"]),
    "ja": (["承認", "承認します"], ["却下", "却下します"]),
    "zh": (["批准", "同意"], ["拒绝"]),
    "ko": (["승인", "승인합니다"], ["거절", "거절합니다"]),
    "ru": (["да"], ["нет"]),
    "tr": (["evet"], ["hayır"]),
    "fi": (["kyllä"], ["ei"]),
}


def _html_to_text(markup: str) -> str:
    # As channels/email/parse.py turns HTML-only mail into text.
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    return str(converter.handle(markup))


@dataclass(frozen=True)
class Shape:
    name: str
    lang: str
    reply: str
    decides: str
    template: str

    def body(self, reply: str) -> str:
        if not self.name.endswith(".html"):
            return self.template.replace("{reply}", reply)
        markup = "<br>".join(html.escape(line) for line in reply.split("\n"))
        return _html_to_text(self.template.replace("{reply}", markup))

    @property
    def words(self) -> DecisionWords:
        approve, reject = LOCAL.get(self.lang, ([], []))
        return WORDS.extended(approve=approve, reject=reject)


def _load(path: Path) -> Shape:
    head, _, template = path.read_text(encoding="utf-8").partition("=====\n")
    fields: dict[str, list[str]] = {}
    for line in head.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key, []).append(value.strip())
    return Shape(
        name=path.name,
        lang=fields.get("lang", ["en"])[0],
        reply="\n".join(fields["reply"]),
        decides=fields["decides"][0],
        template=template,
    )


SHAPES = [_load(p) for p in sorted(CORPUS.iterdir()) if p.suffix in (".txt", ".html")]
BY_NAME = {s.name: s for s in SHAPES}
SHAPE_IDS = [s.name for s in SHAPES]
DECISION_WORD = re.compile(r"\b(?:approve|reject|yes|no)\b", re.IGNORECASE)


def _verdict(found: Decided | Unclear) -> str:
    return found.verdict if isinstance(found, Decided) else "unclear"


# -- the corpus --------------------------------------------------------------------------------


def test_the_corpus_covers_the_clients_and_languages() -> None:
    names = " ".join(BY_NAME)
    for client in (
        "gmail_web",
        "gmail_android",
        "gmail_ios",
        "gmail_old_two_lines",
        "outlook_",
        "outlook_web",
        "outlook_mac",
        "apple_mail",
        "ios_mail",
        "thunderbird_top",
        "thunderbird_bottom",
        "yahoo",
        "zoho",
        "label_",
        "interleaved",
        ".html",
    ):
        assert client in names, client
    assert len({s.lang for s in SHAPES}) >= 14
    for shape in SHAPES:
        assert shape.template.count("{reply}") == 1, shape.name


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_every_quote_holds_a_decision_word(shape: Shape) -> None:
    assert DECISION_WORD.search(shape.body("")), shape.name


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_the_reply_is_extracted_exactly(shape: Shape) -> None:
    assert reply_text(shape.body(shape.reply)) == shape.reply


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_the_reply_decides_what_it_says(shape: Shape) -> None:
    found = read_decision(reply_text(shape.body(shape.reply)), shape.words)
    assert _verdict(found) == shape.decides, found


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_a_quote_alone_is_no_reply(shape: Shape) -> None:
    text = reply_text(shape.body(""))
    assert text == ""
    assert read_decision(text, shape.words) == Unclear("empty reply")


# Every decision word, and a few that must not decide, as the whole reply in every shape.
IN_EVERY_SHAPE: list[tuple[str, Decided | Unclear]] = [
    ("approve", Decided("approve", None)),
    ("Approved.", Decided("approve", None)),
    ("YES!", Decided("approve", None)),
    ("yes", Decided("approve", None)),
    ("lgtm 👍", Decided("approve", "👍")),
    ("Approved, go ahead", Decided("approve", "go ahead")),
    ("reject", Decided("reject", None)),
    ("Rejected", Decided("reject", None)),
    ("no", Decided("reject", None)),
    ("Reject: not during the freeze", Decided("reject", "not during the freeze")),
    ("No.\nThe tag is wrong.", Decided("reject", "The tag is wrong.")),
    ("deny", Decided("reject", None)),
    ("Denied - wrong tag", Decided("reject", "wrong tag")),
    ("cancel", Decided("cancel", None)),
    ("Cancel this request", Decided("cancel", None)),
    ("yes, but after 5pm", Unclear("'but' after the approve word: only confirmation may follow")),
    ("No problem, go ahead", Unclear("'problem' right after the reject word may change it")),
    ("approve?", Unclear("the decision is a question")),
]


@pytest.mark.parametrize(("reply", "decided"), IN_EVERY_SHAPE, ids=[r for r, _ in IN_EVERY_SHAPE])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_decision_words_in_every_shape(shape: Shape, reply: str, decided: object) -> None:
    text = reply_text(shape.body(reply))
    assert text == reply
    assert read_decision(text, WORDS) == decided


@pytest.mark.parametrize("shape", [s for s in SHAPES if s.lang in LOCAL], ids=lambda s: s.name)
def test_a_languages_own_words_decide(shape: Shape) -> None:
    (approve, *_), (reject, *_) = LOCAL[shape.lang]
    for reply, decided in (
        (approve.capitalize(), Decided("approve", None)),
        (reject.capitalize(), Decided("reject", None)),
    ):
        text = reply_text(shape.body(reply))
        assert text == reply
        assert read_decision(text, shape.words) == decided
    with_reason = reply_text(shape.body(f"{reject}: v1.4.3"))
    assert read_decision(with_reason, shape.words) == Decided("reject", "v1.4.3")
    assert read_decision(approve, WORDS) == Unclear("no decision word")


# -- reply_text beyond the corpus ----------------------------------------------------------------


def test_every_language_of_the_package_is_used() -> None:
    # parse.py once passed four of them; quotes.py compiles them all.
    assert set(LANGUAGES) == set(MAIL_LANGUAGES)
    assert len(LANGUAGES) >= 13


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        # interleaved answers: each part is the reply, the quotes between are not
        (
            "> Deploy v1.4.2?\nno\n> Reply approve or reject.\nThe tag is wrong.",
            "no\n\nThe tag is wrong.",
        ),
        # a signature ends at the quote; a device line is dropped wherever it is
        ("Approved\n-- \nAna\n\n> approve or reject", "Approved"),
        ("Sent from my iPhone\nYes", "Yes"),
        # a device line that says more is a message
        ("Sent from my iPhone but wait until 5pm", "Sent from my iPhone but wait until 5pm"),
        # a warning that does not warn about the sender is the reply
        ("Warning: only after the freeze\nApproved", "Warning: only after the freeze\nApproved"),
        ("[EXTERNAL]\nApproved", "Approved"),
        ("Approved\n\nClassification: Internal", "Approved"),
        # "On ... wrote:" in the reply's own first line is the start of the history
        ("On Mon, Mar 3, 2025 at 10:02 AM Bot <b@example.com> wrote:\napprove", ""),
        # a Windows body; invisible characters
        ("Approved\r\n\r\nOn 3 Mar 2025, Bot <b@example.com> wrote:\r\n> reject\r\n", "Approved"),
        ("\ufeffYes\u200b\x00", "Yes"),
        # an Outlook header block without a rule before it
        ("No\nFrom: Bot <b@example.com>\nSent: Monday\nTo: Ana\n\napprove or reject", "No"),
        ("", ""),
    ],
)
def test_reply_text_cases(body: str, reply: str) -> None:
    assert reply_text(body) == reply


def test_a_huge_body_is_read_quickly() -> None:
    history = (
        "From: Bot <b@example.com>\nSent: Monday\nTo: Ana\nSubject: x\n\n"
        + ("Reply approve or reject. " * 40 + "\n") * 1_000
    )
    bodies = [
        "Approved\n\n" + history * 2,  # over 1 MB of unquoted history
        "Approved\n\nOn 3 Mar 2025, Bot <b@example.com> wrote:\n" + "> yes\n" * 200_000,
        "On " + "a " * 2_000_000 + "wrote:",  # one line
        ("On " + "x " * 95 + ":\n") * 8_000,  # the package's slowest case, over and over
        "\n" * 1_000_000,
    ]
    for body in bodies:
        assert len(body) >= 1_000_000
        started = time.perf_counter()
        text = reply_text(body)
        # Measured at 2 to 150 ms; the margin is for slow machines.
        assert time.perf_counter() - started < 1.0
        assert len(text) <= MAX_CHARS


def test_a_reply_below_more_than_the_bound_is_not_seen() -> None:
    body = "On 3 Mar 2025, Bot <b@example.com> wrote:\n" + "> yes\n" * (MAX_CHARS // 6) + "\nno"
    assert reply_text(body) == ""


# -- read_decision: the spec's table -----------------------------------------------------------

JA = WORDS.extended(approve=["ja"], reject=["nein"])
OK = WORDS.extended(approve=["ok", "okay", "sure", "fine", "👍", "+1"], reject=["nope"])
NO_WORD = Unclear("no decision word")

EXPLICIT: list[tuple[str, DecisionWords, Decided]] = [
    ("Approved.", WORDS, Decided("approve", None)),
    ("YES!", WORDS, Decided("approve", None)),
    ("lgtm 👍", WORDS, Decided("approve", "👍")),
    ("👍", WORDS, Decided("approve", None)),
    ("👎: wrong tag", WORDS, Decided("reject", "wrong tag")),
    ("Approve.", WORDS, Decided("approve", None)),
    ("**Approved**", WORDS, Decided("approve", None)),
    ("Approved ✔️", WORDS, Decided("approve", "✔")),
    ("Hi,\n\nApproved.", WORDS, Decided("approve", None)),
    ("Hello team,\nyes", WORDS, Decided("approve", None)),
    ("Hi Ana, approved", WORDS, Decided("approve", None)),
    ("Hallo,\n\nJa", JA, Decided("approve", None)),
    ("Approved, go ahead", WORDS, Decided("approve", "go ahead")),
    ("Yes, please proceed", WORDS, Decided("approve", "please proceed")),
    ("Approve - thanks!", WORDS, Decided("approve", None)),
    ("LGTM, ship it", WORDS, Decided("approve", "ship it")),
    ("Approved\n\nThanks,\nOps", WORDS, Decided("approve", None)),
    ("Approved.\n\nBest,\nAna", WORDS, Decided("approve", None)),
    ("Yes.\n\nBest regards,\nAna Silva\nHead of Platform", WORDS, Decided("approve", None)),
    ("Approved, thanks Ana", WORDS, Decided("approve", None)),
    ("Approved\n- Ana", WORDS, Decided("approve", None)),
    ("Reject: not during the freeze", WORDS, Decided("reject", "not during the freeze")),
    ("no\nThe tag is wrong.", WORDS, Decided("reject", "The tag is wrong.")),
    ("Rejected - wrong tag", WORDS, Decided("reject", "wrong tag")),
    ("no\nThe tag is wrong.\n\nThanks,\nAna", WORDS, Decided("reject", "The tag is wrong.")),
    ("Rejected because the tag is wrong", WORDS, Decided("reject", "because the tag is wrong")),
    ("Deny.\nFirst line.\nSecond line.", WORDS, Decided("reject", "First line.\nSecond line.")),
    ("No thanks", WORDS, Decided("reject", None)),
    ("Nein, der Tag ist falsch.", JA, Decided("reject", "der Tag ist falsch.")),
    ("cancel", WORDS, Decided("cancel", None)),
    ("Cancel this request", WORDS, Decided("cancel", None)),
    ("ok", OK, Decided("approve", None)),
    ("👍", OK, Decided("approve", None)),
    ("+1", OK, Decided("approve", None)),
    ("Sure, go ahead", OK, Decided("approve", "go ahead")),
]

AMBIGUOUS: list[tuple[str, DecisionWords]] = [
    (text, words)
    for words in (WORDS, OK)
    for text in [
        "yes, but after 5pm",
        "ok, let me check with finance",
        "OK, I will look at this tomorrow - hold off",
        "yes if the tests pass",
        "approve?",
        "Yes? Which tag?",
        "yes... wait",
        "not yet",
        "hold on",
        "wait",
        "No problem, go ahead",
        "No objection from me, ship it",
        "no worries",
        "No issues, go ahead",
        "no concerns",
        "nope... wait, yes",
        "yes and no",
        "approve or reject?",
        "don't approve",
        "I don't know",
        "Yes, no, maybe",
        "approve... actually no",
        "You asked me to approve",
        '"approve"',
        "Approved? No.",
        "cancel? ",
        "Approved for staging only",
        "Approved after the release",
        "Approved, thanks\nStaging only",
        "Approved\nStaging",
        "Approved, thanks.\nTomorrow",
        "Approved 2",
        "Approved at 17:00",
        "Yes, except the database",
        "Yes instead of the old one",
        "Approve once Bob agrees",
        "Approved ¿",
        "No, approve it after the fix",
        "Reject - never mind",
        "no, cancel it",
        "No 👍",
        "Hey no problem",
        "Hi yes",
        "Yesterday",
        "Notably, no",
        "Approver here",
        "Cancel the deploy but keep the branch",
        "",
        "  \n\t",
    ]
]


@pytest.mark.parametrize(("text", "words", "decided"), EXPLICIT, ids=[t for t, _, _ in EXPLICIT])
def test_explicit_replies_decide(text: str, words: DecisionWords, decided: Decided) -> None:
    assert read_decision(text, words) == decided


@pytest.mark.parametrize(("text", "words"), AMBIGUOUS, ids=[t or "empty" for t, _ in AMBIGUOUS])
def test_ambiguous_replies_are_unclear(text: str, words: DecisionWords) -> None:
    assert isinstance(read_decision(text, words), Unclear)


@pytest.mark.parametrize("text", ["ok", "okay", "sure", "fine", "+1", "Yesterday", "Notably"])
def test_words_that_decide_nothing_by_default(text: str) -> None:
    assert read_decision(text, WORDS) == NO_WORD


def test_empty_replies_say_so() -> None:
    assert read_decision("", WORDS) == Unclear("empty reply")
    assert read_decision(" .\n", WORDS) == Unclear("empty reply")


def test_decision_words_are_checked_at_start_up() -> None:
    with pytest.raises(ValueError, match="both approve and reject"):
        WORDS.extended(approve=["ok"], reject=["OK"])
    with pytest.raises(ValueError, match="no word"):
        WORDS.extended(approve=["..."])
    assert WORDS.extended(approve=["", " "]) == WORDS
    assert read_decision("ja", WORDS.extended(approve="ja")) == Decided("approve", None)


# -- properties ----------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=400)
HEDGES = [
    "but",
    "if",
    "unless",
    "after",
    "before",
    "wait",
    "hold",
    "tomorrow",
    "later",
    "check",
    "first",
    "only",
    "except",
    "not",
    "don't",
    "instead",
    "at 5pm",
    "when",
    "once",
    "maybe",
    "?",
    "pending",
    "until",
    "let me",
    "I think",
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
@example("\x00")
@example("\ud800yes\udfff")
@example("yes\ud800")
@example("Hi,\n")
@example("> " * 50)
def test_nothing_raises(text: str) -> None:
    assert isinstance(reply_text(text), str)
    for words in (WORDS, OK):
        assert isinstance(read_decision(text, words), Decided | Unclear)
        assert isinstance(read_decision(reply_text(text), words), Decided | Unclear)


@settings(max_examples=200)
@given(ANY_TEXT, st.sampled_from(SHAPES))
def test_a_quote_alone_never_decides(text: str, shape: Shape) -> None:
    quoted = "\n".join(f"> {line}" for line in text.splitlines())
    for body in (
        f"On Mon, Mar 3, 2025 at 10:02 AM Bot <b@example.com> wrote:\n{quoted}\n",
        f"\n\n{quoted}",
        shape.body("") + quoted,
    ):
        assert isinstance(read_decision(reply_text(body), OK), Unclear)


@settings(max_examples=300)
@given(st.sampled_from(HEDGES), ANY_TEXT, st.sampled_from(["yes, ", "Approved ", "LGTM - "]))
def test_a_hedge_after_an_approval_never_approves(hedge: str, rest: str, opening: str) -> None:
    text = f"{opening}{hedge} {rest}"
    found = read_decision(text, OK)
    assert not (isinstance(found, Decided) and found.verdict == "approve")


@settings(max_examples=300)
@given(ANY_TEXT, ANY_TEXT)
def test_a_question_mark_never_approves(before: str, after: str) -> None:
    found = read_decision(f"yes {before}?{after}", OK)
    assert not (isinstance(found, Decided) and found.verdict == "approve")


@settings(max_examples=200)
@given(st.sampled_from(["problem", "objection", "worries", "issues", "concerns"]), ANY_TEXT)
def test_no_followed_by_a_word_never_rejects(word: str, rest: str) -> None:
    assert isinstance(read_decision(f"No {word}{rest}", WORDS), Unclear)


@settings(max_examples=200)
@given(
    st.sampled_from(
        [
            "Yesterday",
            "Notably",
            "Approver",
            "Nobody",
            "Yessir",
            "Cancelled",
            "Denying",
            "Rejections",
        ]
    ),
    ANY_TEXT,
)
def test_only_whole_words_decide(word: str, rest: str) -> None:
    assert read_decision(f"{word} {rest}", WORDS) == NO_WORD


REPLY_PARTS = [
    "yes",
    "no",
    "approve",
    "Approved",
    "reject",
    "cancel",
    "ok",
    "👍",
    "?",
    "\n",
    ",",
    ".",
    "go ahead",
    "wait",
    "but",
    "Hi",
    "thanks",
    "Ana",
    "the tag",
    "Best,\n",
    "please",
    "Sent from",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REPLY_PARTS), min_size=1, max_size=12), st.sampled_from(SHAPES))
def test_a_reply_decides_in_a_shape_as_it_does_alone(parts: list[str], shape: Shape) -> None:
    reply = " ".join(parts)
    alone = read_decision(reply_text(reply), OK)  # a device line is dropped alone too
    found = read_decision(reply_text(shape.body(reply)), OK)
    if isinstance(found, Decided):
        assert isinstance(alone, Decided)
        assert found.verdict == alone.verdict
