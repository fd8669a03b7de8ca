"""Reading an approver's explicit decision from the words of their reply.

``text`` is ``reply.reply_text``'s output. A wrong decision is far worse than asking again, so
anything short of explicit is ``Unclear``:

- The reply opens with a decision word or phrase (``DecisionWords``; teams add their own
  language's). Case, punctuation and markup around it do not matter, a greeting line may come
  first ("Hi Ana,"), and only whole words count: "Yesterday" is not "yes".
- A decision word followed by a question mark ("approve?", "No? Which tag?") decides nothing.
- After an approval (and a cancel) only what confirms it may follow: an allow-list of phrases
  ("go ahead", "ship it", "thanks", "👍") and punctuation other than "?", then a sign-off
  ("Thanks,\\nAna": a sign-off phrase, or a dash at the start of a line, and capitalised name
  words up to the end). Anything else - a condition, a hedge, a time, a question - is Unclear.
- After a rejection the rest of the reply is the reason (without a clear sign-off). But "no"
  directly followed by a word ("No problem", "no worries", "No objection from me") is not a
  rejection, only punctuation, a line break or a connector ("because") may follow; and a
  reason with words that may flip it ("wait", "actually", "go ahead", any approve or cancel
  word) makes the whole reply Unclear.

Any string is read without an exception: NUL, lone surrogates and 1 MB included (past
``MAX_CHARS`` a reply is Unclear).
"""

# The word lists are in many scripts on purpose: look-alike letters are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

Verdict = Literal["approve", "reject", "cancel"]
MAX_CHARS = 20_000


@dataclass(frozen=True)
class Decided:
    verdict: Verdict
    reason: str | None  # reject: the rest of the reply; approve: what confirms it, if anything


@dataclass(frozen=True)
class Unclear:
    why: str  # short, for the log and the "how to decide" answer


@dataclass(frozen=True)
class _Tok:
    kind: Literal["word", "sym", "sep", "ask", "nl"]
    text: str  # as written (NFKC)
    key: str  # case-folded
    start: int
    end: int


def _tokens(text: str) -> tuple[_Tok, ...]:
    """Words (letters, digits and marks, "don't"), symbols (emoji), punctuation, line breaks."""
    out: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        cat = unicodedata.category(c)
        if c == "\n":
            out.append(_Tok("nl", c, c, i, i + 1))
        elif c.isspace() or cat in ("Cc", "Mn", "Me", "Mc", "Cf", "Sk"):
            pass  # spaces, controls; variation selectors, skin tones and joiners after emoji
        elif cat[0] in "LN":
            j = i + 1
            while j < n and (
                unicodedata.category(text[j])[0] in "LNM"
                or (text[j] in "'’" and j + 1 < n and unicodedata.category(text[j + 1])[0] in "LN")
            ):
                j += 1
            word = text[i:j].replace("’", "'")
            out.append(_Tok("word", word, word.casefold(), i, j))
            i = j
            continue
        elif c in "?¿؟⸮":
            out.append(_Tok("ask", c, c, i, i + 1))
        else:
            out.append(_Tok("sep" if cat[0] == "P" else "sym", c, c, i, i + 1))
        i += 1
    return tuple(out)


def _normalized(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFKC", text)


@lru_cache(maxsize=4096)
def _phrase(text: str) -> tuple[str, ...]:
    """A word or phrase as the keys of its tokens; () if it has no word or symbol in it."""
    toks = [t for t in _tokens(_normalized(text)) if t.kind != "nl"]
    if not toks or toks[0].kind not in ("word", "sym"):
        return ()
    return tuple(t.key for t in toks)


def _keys(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Phrases by their first token, the longest first (the longest match wins): one look-up a token.
_Index = dict[str, tuple[tuple[str, ...], ...]]


def _indexed(phrases: Iterable[tuple[str, ...]]) -> _Index:
    index: dict[str, list[tuple[str, ...]]] = {}
    for phrase in sorted(set(phrases), key=len, reverse=True):
        index.setdefault(phrase[0], []).append(phrase)
    return {first: tuple(found) for first, found in index.items()}


def _phrases(words: str) -> _Index:
    """ "a|b c" as an index of phrases."""
    return _indexed(p for p in map(_phrase, words.split("|")) if p)


@dataclass(frozen=True)
class DecisionWords:
    """The words that decide; ``extended`` adds a team's own (from config)."""

    approve: frozenset[str]
    reject: frozenset[str]
    cancel: frozenset[str]
    _index: _Index = field(init=False, repr=False, compare=False)
    _verdicts: dict[tuple[str, ...], Verdict] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: dict[tuple[str, ...], Verdict] = {}
        sets: tuple[tuple[Verdict, frozenset[str]], ...] = (
            ("approve", self.approve),
            ("reject", self.reject),
            ("cancel", self.cancel),
        )
        for verdict, words in sets:
            for word in words:
                if not word.strip():
                    continue  # an empty item of a comma-separated setting
                key = _phrase(word)
                if not key:
                    raise ValueError(f"decision word {word!r} ({verdict}) has no word in it")
                if seen.get(key, verdict) != verdict:
                    raise ValueError(f"decision word {word!r} is both {seen[key]} and {verdict}")
                seen[key] = verdict
        object.__setattr__(self, "_index", _indexed(seen))
        object.__setattr__(self, "_verdicts", seen)

    @classmethod
    def default(cls) -> DecisionWords:
        return cls(
            # A thumb alone is as explicit as a word in mail and chat alike.
            approve=frozenset({"approve", "approved", "yes", "lgtm", "👍"}),
            reject=frozenset({"reject", "rejected", "no", "deny", "denied", "👎"}),
            cancel=frozenset({"cancel"}),
        )

    def extended(
        self, approve: Iterable[str] = (), reject: Iterable[str] = (), cancel: Iterable[str] = ()
    ) -> DecisionWords:
        return DecisionWords(
            approve=self.approve | _set_of(approve),
            reject=self.reject | _set_of(reject),
            cancel=self.cancel | _set_of(cancel),
        )

    def _verdict_at(self, toks: Sequence[_Tok], i: int) -> tuple[Verdict, int] | None:
        end = _match_any(toks, i, self._index)
        return (self._verdicts[tuple(t.key for t in toks[i:end])], end) if end > i else None

    def _any_at(self, toks: Sequence[_Tok], i: int) -> bool:
        return self._verdict_at(toks, i) is not None


def _set_of(words: Iterable[str]) -> frozenset[str]:
    # One word given as a string is one word, not its letters.
    return frozenset(w for w in ([words] if isinstance(words, str) else words) if w.strip())


def _matches(toks: Sequence[_Tok], i: int, key: tuple[str, ...]) -> bool:
    if i + len(key) > len(toks):
        return False
    return all(toks[i + k].key == part for k, part in enumerate(key))


def _match_any(toks: Sequence[_Tok], i: int, phrases: _Index) -> int:
    """The end of the longest phrase that starts at ``i``, or ``i``."""
    if i >= len(toks):
        return i
    for key in phrases.get(toks[i].key, ()):
        if _matches(toks, i, key):
            return i + len(key)
    return i


# Markup an HTML reply may open with ("**Approved**").
_MARKUP = frozenset("*_~`")
_PUNCTUATION = frozenset(".,;:!-–—…'\"()[]*_~`/|&")

_GREETINGS = _phrases(
    "hi|hello|hey|dear|hi there|hello there|hiya|greetings|yo|good morning|good afternoon|"
    "good evening|morning|hallo|guten morgen|guten tag|moin|servus|grüezi|liebe|lieber|"
    "sehr geehrte|sehr geehrter|bonjour|bonsoir|salut|coucou|hola|buenos días|buenas|"
    "buenas tardes|ciao|salve|buongiorno|hoi|goedemorgen|goedemiddag|beste|hej|hei|moi|"
    "cześć|dzień dobry|witam|olá|oi|bom dia|boa tarde|привет|здравствуйте|добрый день|ahoj|"
    "dobrý den|merhaba|こんにちは|お疲れ様です|お世話になっております|你好|您好|大家好|안녕하세요"
)
# What may follow an approval: confirmation only. Never a condition, a time or a question.
_CONFIRM = _phrases(
    "go ahead|go for it|go|please go ahead|proceed|please proceed|ship it|ship|do it|please do|"
    "thanks|thank you|thanks a lot|many thanks|thx|ty|please|pls|plz|cheers|sounds good|"
    "looks good|looks good to me|all good|good to go|great|perfect|nice|awesome|of course|"
    "absolutely|definitely|sure|confirmed|done|+1|"
    "👍|✅|✔|☑|👌|🚀|🙏|🙂|😊|😀|😃|🎉|💯|☺|🙌|👏|🤝|💪|"
    # thanks and please
    "danke|vielen dank|bitte|merci|merci beaucoup|gracias|muchas gracias|por favor|grazie|"
    "per favore|bedankt|dank je|dank u|obrigado|obrigada|tack|dzięki|dziękuję|спасибо|"
    "пожалуйста|děkuji|díky|kiitos|tak|teşekkürler|ありがとう|ありがとうございます|谢谢|謝謝|"
    "感谢|감사합니다|고맙습니다|"
    # go ahead
    "leg los|los|allez-y|vas-y|adelante|procede|procedi|procedi pure|vai|ga je gang|ga door|"
    "pode seguir|prossiga|kör|kör på|kør|śmiało|вперёд|devam|devam edin"
)
_CANCEL_CONFIRM = _phrases("this|that|it|the|request|approval|please|pls|now|thanks|thank you|👍")
_SIGNOFFS = _phrases(
    "thanks|thank you|many thanks|thanks again|thx|cheers|best|best regards|kind regards|"
    "warm regards|regards|all the best|br|kr|rgds|sincerely|yours|danke|vielen dank|"
    "viele grüße|beste grüße|liebe grüße|lg|vg|mfg|mit freundlichen grüßen|gruß|grüße|"
    "merci|cordialement|bien à vous|gracias|saludos|un saludo|atentamente|grazie|saluti|"
    "cordiali saluti|bedankt|groeten|met vriendelijke groet|mvg|obrigado|obrigada|abraços|"
    "atenciosamente|cumprimentos|tack|hälsningar|mvh|vänliga hälsningar|dzięki|dziękuję|"
    "pozdrawiam|спасибо|с уважением|děkuji|s pozdravem|よろしくお願いします|谢谢|此致|감사합니다"
)
# Right after "no", only these words keep it a rejection ("no thanks", "no because ...").
_REJECT_CONNECTORS = _phrases("because|since|as|due|for|thanks|thank you|sorry")
# In a rejection's reason, words that may turn it around.
_FLIPS = _phrases(
    "wait|actually|kidding|jk|j/k|go ahead|proceed|ship it|lgtm|never mind|nevermind|"
    "scratch that|disregard|ignore|maybe|perhaps|not sure|unsure|changed my mind|"
    "second thought|on second thought|no problem|no problems|no objection|no objections|"
    "no worries|no issue|no issues|no concern|no concerns|not a problem|no blocker|"
    "no blockers|looks good|sounds good|fine by me|fine with me|works for me|all good|👍|✅|"
    "✔|👌|+1"
)
_PARTICLES = _keys("of de van der den von da du la le y e and & di del dos das")
# Lower-case words a signature line may hold after a name ("Ops team", "Ana, platform lead").
_ROLES = _keys(
    "team ops oncall on-call sre devops platform engineering support manager lead admin it "
    "security finance desk infra infrastructure department group"
)
# Words that look like names when capitalised but are conditions.
_NOT_NAMES = _keys(
    "wait hold later tomorrow today tonight soon now asap eod eow noon morning evening night "
    "afternoon weekend week month first then when only but if unless after before until not "
    "pending pause paused stop stopped staging prod production test tests monday tuesday "
    "wednesday thursday friday saturday sunday january february march april may june july "
    "august september october november december next except instead maybe"
)


def read_decision(text: str, words: DecisionWords) -> Decided | Unclear:
    """The decision ``text`` makes explicitly, or why it makes none."""
    if len(text) > MAX_CHARS:
        return Unclear("too long to read as a decision")
    source = _normalized(text)
    toks = _tokens(source)
    if not any(t.kind in ("word", "sym") for t in toks):
        return Unclear("empty reply")
    i = _after_greeting(toks, words)
    while i < len(toks) and (toks[i].kind == "nl" or toks[i].text in _MARKUP):
        i += 1
    found = words._verdict_at(toks, i)
    if found is None:
        return Unclear("no decision word")
    verdict, i = found
    j = _skip(toks, i, lambda t: t.kind == "sep" and t.text in _MARKUP)
    if j < len(toks) and toks[j].kind == "ask":
        return Unclear("the decision is a question")
    if verdict == "reject":
        return _rejection(source, toks, i, words)
    allowed = _CONFIRM if verdict == "approve" else _CANCEL_CONFIRM
    return _confirmed(source, toks, i, verdict, allowed, words)


def _skip(toks: Sequence[_Tok], i: int, skip: Callable[[_Tok], bool]) -> int:
    while i < len(toks) and skip(toks[i]):
        i += 1
    return i


def _after_greeting(toks: Sequence[_Tok], words: DecisionWords) -> int:
    """Where the reply starts after at most two greeting lines ("Hi Ana," / "Hello team")."""
    i = _skip(toks, 0, lambda t: t.kind == "nl")
    for _ in range(2):
        end = _match_any(toks, i, _GREETINGS)
        if end == i:
            return i
        names = 0
        while end < len(toks) and toks[end].kind == "word" and names < 4:
            if words._any_at(toks, end):
                return i
            end, names = end + 1, names + 1
        if end < len(toks) and not (toks[end].kind == "nl" or toks[end].text in ",!:.-—"):
            return i
        i = _skip(toks, end + 1, lambda t: t.kind == "nl" or t.text in _MARKUP)
    return i


def _confirmed(
    source: str,
    toks: Sequence[_Tok],
    i: int,
    verdict: Verdict,
    allowed: _Index,
    words: DecisionWords,
) -> Decided | Unclear:
    start, end, signed = i, i, False
    while i < len(toks):
        tok = toks[i]
        if tok.kind in ("sep", "nl"):
            if tok.text in "-–—~" and (i == 0 or toks[i - 1].kind == "nl"):
                signed = True  # "- Ana": a signature
            i += 1
            continue
        paragraph = i >= 2 and toks[i - 1].kind == "nl" and toks[i - 2].kind == "nl"
        if (signed or paragraph) and _names_to_end(toks, i, words):
            break  # "Approve\n\nAna Silva" / "\n\nOps team": a name, after a blank line
        after = _match_any(toks, i, allowed)
        if after == i and verdict == "approve":
            found = words._verdict_at(toks, i)
            after = found[1] if found and found[0] == "approve" else i
        signoff = _match_any(toks, i, _SIGNOFFS)
        if after == i and signoff == i:
            return Unclear(f"{tok.text!r} after the {verdict} word: only confirmation may follow")
        signed = signoff > i
        i = max(after, signoff)
        if not signed:
            end = i
    comment = source[toks[start].start : toks[end - 1].end] if end > start else ""
    comment = comment.strip(" \n" + "".join(_PUNCTUATION))
    return Decided(verdict, comment if verdict == "approve" and comment else None)


def _names_to_end(toks: Sequence[_Tok], i: int, words: DecisionWords) -> bool:
    """Whether from ``i`` to the end there are only a few lines of capitalised names."""
    names = lines = 0
    broken = False
    for j in range(i, len(toks)):
        tok = toks[j]
        if tok.kind == "nl":
            broken = names > 0
        elif tok.kind == "word":
            first = tok.text[0]
            name = first.isupper() or (
                first.isalpha() and not first.islower() and tok.key == tok.text
            )
            if tok.key in _NOT_NAMES or words._any_at(toks, j) or first.isdigit():
                return False
            if not (name or tok.key in _PARTICLES or (names and tok.key in _ROLES)):
                return False
            names, lines, broken = names + 1, lines + broken, False
            if names > 8 or lines > 2:
                return False  # more than a name and a title or two
        elif tok.kind != "sep" or tok.text not in ",.-–|/()&'":
            return False
    return names > 0


def _rejection(
    source: str, toks: Sequence[_Tok], i: int, words: DecisionWords
) -> Decided | Unclear:
    if (
        i < len(toks)
        and toks[i].kind in ("word", "sym")
        and _match_any(toks, i, _REJECT_CONNECTORS) == i
    ):
        return Unclear(f"{toks[i].text!r} right after the reject word may change it")
    for j in range(i, len(toks)):
        if _match_any(toks, j, _FLIPS) > j:
            return Unclear(f"{toks[j].text!r} in the reason may change the rejection")
        found = words._verdict_at(toks, j)
        if found is not None and found[0] != "reject":
            return Unclear(f"{toks[j].text!r} in the reason contradicts the rejection")
    stop = _signoff_at(toks, i, words)
    if stop <= i:
        return Decided("reject", None)
    reason = source[toks[i].start : toks[stop - 1].end].lstrip(" \n:;,.-–—!").strip()
    return Decided("reject", reason or None)


def _signoff_at(toks: Sequence[_Tok], i: int, words: DecisionWords) -> int:
    """Where a trailing sign-off ("Thanks,\\nAna", "- Ana") starts, else the end."""
    first = _skip(toks, i, lambda t: t.kind == "sep")
    for j in range(first, len(toks)):
        if j > first and toks[j - 1].kind != "nl":
            continue  # a sign-off starts a line (or the reason)
        end = _match_any(toks, j, _SIGNOFFS)
        if end == j and toks[j].text in "-–—~":
            end = j + 1
        if end > j:
            rest = _skip(toks, end, lambda t: t.kind in ("nl", "sep") and t.text in "\n,.!")
            if rest == len(toks) or _names_to_end(toks, rest, words):
                return j
    return len(toks)
