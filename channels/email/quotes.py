"""Where the quoted history of an email starts: the lines that introduce an earlier message.

A *marker* is one of:

- an attribution line, "On Mon, 3 Mar 2025 at 10:02, Ana <ana@example.com> wrote:", in any
  language and wrapped over up to three lines. mail-parser-reply's patterns (every language it
  knows, ``LANGUAGES``) are tried first; ours then accept any line ending in a colon that has a
  date or time and an address or a verb for "wrote" (Gmail's Russian, Portuguese, Chinese and
  Korean forms, among others, which the package does not know), and "X wrote:" with neither
  when quoted lines follow it;
- a header block: a "From:" line followed by another header line ("Sent:", "To:" ...), or
  with two of them on its own line, in any of the languages in ``_FROM`` and ``_OTHER`` or the
  package's own (Outlook, Apple Mail, Thunderbird, Yahoo forwards);
- a separator with text between dashes, "-----Original Message-----", "---- On ... wrote ----"
  (Zoho), "---------- Forwarded message ---------", in any language;
- a rule ("______", html2text's "* * *") when a marker follows it.

``marker_at`` only says where a marker is and how many lines it takes; what follows it (quoted
or not) is the caller's business. Every test is bounded in the length of the text it looks at,
so that a long line or a hostile body costs linear time.
"""

# The word lists are in many scripts on purpose: look-alike letters are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import re
from collections.abc import Sequence

from mailparser_reply.constants import GENERIC_MAIL_SEPARATOR, MAIL_LANGUAGES

LANGUAGES: tuple[str, ...] = tuple(MAIL_LANGUAGES)

# An attribution is one line, or one wrapped over at most this many.
_WRAP = 3
# Longer candidates are not attributions.
_MAX_ATTRIBUTION = 300
# The package's patterns are quadratic in the length of a line (about 2 ms for 200 characters):
# they are tried on shorter candidates only, at most this many per body; ours on all.
_MAX_PACKAGE_LENGTH = 200
_MAX_PACKAGE_TRIES = 50

_PACKAGE_WROTE = re.compile(
    "|".join(f"(?:{v['wrote_header']})" for v in MAIL_LANGUAGES.values() if "wrote_header" in v),
    re.IGNORECASE,
)
_PACKAGE_BLOCK = re.compile(
    "|".join(f"(?:{v['from_header']})" for v in MAIL_LANGUAGES.values() if "from_header" in v),
    re.IGNORECASE | re.MULTILINE,
)
_PACKAGE_SEPARATOR = re.compile(GENERIC_MAIL_SEPARATOR, re.IGNORECASE)

_WROTE = (
    r"wrote|writes|a [ée]crit|schrieb|escribi[óo]|escreveu|ha scritto|scrisse|schreef|skrev|"
    r"kirjoitti|napisa[łl](?:\(a\)|a)?|napsal(?:\(a\)|a)?|написал(?:\(а\)|а)?|пише|писал|yazd[ıi]|"
    r"έγραψε|a scris|írta|写道|寫道|작성(?:하였습니다|했습니다)?|のメッセージ"
)
_NAMED_WROTE = re.compile(rf"\S\s+(?:{_WROTE})\s*[:：]$", re.IGNORECASE)
# Yahoo's Android app runs the attribution and the quote into one line: "... wrote:   Deploy".
_INLINE = re.compile(rf"^.{{0,200}}?\s(?:{_WROTE})\s*[:：] {{2,}}\S", re.IGNORECASE)
_ADDRESS = re.compile(r"\S+@\S+")
_DIGIT = re.compile(r"\d")

_FROM = (
    r"From|Von|De|De la|Da|Van|Från|Fra|Frá|Lähettäjä|Od|Feladó|От|Від|Kimden|Από|"
    r"差出人|发件人|發件人|寄件者|寄件人|보낸\s?사람"
)
_OTHER = (
    r"Sent|To|Cc|Bcc|Subject|Date|Reply-To|"
    r"Gesendet|An|Betreff|Datum|Kopie|"
    r"Envoy[ée]|Envoy[ée] le|[ÀA]|Objet|Date|"
    r"Enviado|Enviada|Enviado el|Para|Asunto|Assunto|Fecha|Data|"
    r"Inviato|Oggetto|Verzonden|Aan|Onderwerp|Skickat|Till|Ämne|Kopia|Sendt|Til|Emne|Dato|"
    r"Lähetetty|Vastaanottaja|Aihe|Wysłano|Wysłane|Do|Temat|DW|Odesláno|Komu|Předmět|"
    r"Elküldve|Címzett|Tárgy|Trimis|Către|Subiect|Отправлено|Кому|Тема|Дата|Копия|"
    r"Надіслано|Gönderildi|Gönderilme|Kime|Konu|Tarih|Στάλθηκε|Προς|Θέμα|"
    r"送信日時|宛先|件名|日付|发送时间|發送時間|收件人|收件者|主题|主旨|抄送|副本|寄件日期|日期|"
    r"보낸\s?날짜|받는\s?사람|제목|참조|날짜"
)
_HEADER = r"^[>*\s]*(?:{keys})\s*\**\s*[:：]"
_FROM_LINE = re.compile(_HEADER.format(keys=_FROM), re.IGNORECASE)
# The same block run into one line ("From: Bot Sent: Monday To: Ana Subject: Deploy").
_OTHER_KEY = re.compile(rf"\s\**(?:{_OTHER})\s*\**\s*[:：]", re.IGNORECASE)
_HEADER_LINE = re.compile(_HEADER.format(keys=f"{_FROM}|{_OTHER}"), re.IGNORECASE)
_ANY_KEY_LINE = re.compile(r"^[>*\s]*[^\W\d_][^:：\n]{0,30}[:：]")

_SEPARATOR = re.compile(r"^\s*[-=]{3,}\s*[^-=\s].{0,300}?\s*[-=]{3,}\s*$")
_RULE = re.compile(r"^\s*(?:_{8,}|-{8,}|={8,}|(?:\*\s*){3,}|(?:-\s+){2,}-)\s*$")


def is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


class Finder:
    """Finds markers in one body; counts the package's (costly) tries against its budget."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = lines
        self._package_tries = 0

    def marker_at(self, i: int) -> int:
        """How many lines the marker starting at line ``i`` takes, 0 if none starts there."""
        line = self.lines[i]
        if not line.strip() or is_quoted(line):
            return 0
        if _RULE.match(line):
            after = self._next_nonblank(i + 1, within=2)
            span = self._marker(after) if after is not None else 0
            return after + span - i if span and after is not None else 0
        return self._marker(i)

    def _marker(self, i: int) -> int:
        line = self.lines[i]
        if len(line) <= 400 and (_SEPARATOR.match(line) or _PACKAGE_SEPARATOR.match(line.strip())):
            return 1
        if self._block_at(i):
            return 1
        for k in range(1, _WRAP + 1):
            strength = self._attribution(i, k)
            if strength:
                # "Approved" above an attribution is not part of it: the marker starts where
                # a shorter one does, unless only ours takes that one and the package this.
                later = (self._attribution(i + 1, m) for m in range(1, k))
                return 0 if any(other >= strength for other in later) else k
        return 0

    def _attribution(self, i: int, k: int) -> int:
        """2 if the package's patterns take lines i..i+k-1 as an attribution, 1 if ours do."""
        part = self.lines[i : i + k]
        if len(part) < k or any(not s.strip() or is_quoted(s) for s in part):
            return 0
        if k == 1 and (inline := _INLINE.match(part[0].strip())):
            return int("@" in inline.group(0) and bool(_DIGIT.search(inline.group(0))))
        text = " ".join(s.strip() for s in part).strip("* ")
        if len(text) > _MAX_ATTRIBUTION or not text.endswith((":", "：")):
            return 0
        if len(text) <= _MAX_PACKAGE_LENGTH and self._package_tries < _MAX_PACKAGE_TRIES:
            self._package_tries += 1
            if _PACKAGE_WROTE.match(text):
                return 2
        wrote = bool(_NAMED_WROTE.search(text))
        bare = _ADDRESS.sub(" ", text)
        if _DIGIT.search(bare) and (bare != text or wrote):
            return 1
        # "Ana <ana@example.com> writes:" with no date: it must introduce a quote.
        after = self._next_nonblank(i + k, within=2)
        return int(wrote and after is not None and is_quoted(self.lines[after]))

    def _block_at(self, i: int) -> bool:
        line = self.lines[i]
        if len(line) > 1000 or not _ANY_KEY_LINE.match(line):
            return False
        window = [s for s in self.lines[i : i + 6] if s.strip()][:4]
        if _FROM_LINE.match(line) and (
            any(_HEADER_LINE.match(s) for s in window[1:])
            or len(_OTHER_KEY.findall(line[:400])) >= 2
        ):
            return True
        if self._package_tries >= _MAX_PACKAGE_TRIES:
            return False
        self._package_tries += 1
        found = _PACKAGE_BLOCK.match("\n".join(s.strip()[:200] for s in window))
        # Two header lines at least: the package takes one Polish "Data:" line as a block.
        return found is not None and (
            sum(1 for s in found.group(0).split("\n") if _ANY_KEY_LINE.match(s)) >= 2
        )

    def _next_nonblank(self, start: int, within: int) -> int | None:
        for j in range(start, min(start + within + 1, len(self.lines))):
            if self.lines[j].strip():
                return j
        return None
