"""The reply's own words: what the sender wrote in this message, and nothing else.

An inbound body (plain text, or html2text's rendering of HTML mail) carries, besides the
sender's words, the history it answers, a signature, and lines that mail systems add. Emails
are untrusted and the quoted request itself says "approve or reject", so no quoted word may
ever pass for the reply. ``reply_text`` keeps, line by line:

- never a line quoted with ">";
- never a marker of history (``quotes``: "On ... wrote:", "From: / Sent:" blocks,
  "-----Original Message-----", in every language mail-parser-reply knows and more). A marker
  followed by quoted lines only introduces them: the unquoted text after that quote is the
  reply again (bottom-posting, interleaved answers). A marker followed by unquoted text starts
  the earlier mail (Outlook, Yahoo): it and everything after it are dropped;
- nothing from a "-- " line up to the next quote or marker (the signature), and no device
  line ("Sent from my iPhone", "Von meinem iPhone gesendet", "Get Outlook for iOS");
- no banner at the top or bottom: sensitivity labels ("[Sensitivity: Internal]",
  "Classification: Confidential"), "[EXTERNAL]", and external-sender warnings ("CAUTION: This
  email originated from outside of the organization ...").

Sign-offs ("Thanks,\\nAna") are the sender's words and stay: ``decide`` knows them. Nothing
left means "" (the quoted text is never returned instead).

Only the first ``MAX_CHARS`` characters and ``MAX_LINES`` lines of a body are read: a reply
lives at its top, or right under one quote when bottom-posted, and the work must stay linear
and small whatever the size of the history. A reply written below more than that much quote is
not seen (the result is then "").
"""

# The word lists are in many scripts on purpose: look-alike letters are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import re

from channels.email.quotes import Finder, is_quoted

MAX_CHARS = 100_000
MAX_LINES = 4_000

_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# Controls, and invisible characters that only get in the way of matching. Joiners stay:
# some scripts need them.
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\u00ad\u200b\u2060\ufeff]")
_SPACES = re.compile(r"[\t\xa0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# html2text writes links as [text](url) and escapes markdown: "\-- ", "1\.", "\+1".
_LINK = re.compile(r"\[([^\[\]\n]{0,300})\]\((?:mailto:|https?://)[^()\s]{0,2000}\)")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>])")

_SIGNATURE = re.compile(r"^\s*(?:--|—)\s*$")
_DEVICE = re.compile(
    r"^\W*(?:Sent from|Sent via|Sent with|Sent using|Get Outlook for|Get the Outlook|"
    r"Von meinem|Gesendet von|Gesendet mit|Envoy[ée] de mon|Envoy[ée] depuis|Envoy[ée] avec|"
    r"Enviado desde|Enviado do|Enviado de|Enviado con|Inviato da|Inviato dal|"
    r"Verzonden (?:met|vanaf|van) mijn|Verstuurd (?:met|vanaf|van) mijn|Skickat från|Sendt fra|"
    r"Wysłane z|Wysłano z|Odesláno z|Отправлено (?:с|из)|Надіслано з|Lähetetty|"
    # scripts without spaces, or where "my" opens many sentences: the whole line
    r"\S{0,30}(?:から|より)送信$|(?:从|從)我的\s?\S{0,30}\s?(?:发送|傳送)$|"
    r"(?:发|發)自我的\s?\S{0,30}$|(?:내 )?\S{0,30}에서 보냄$|\S{0,30}(?:dan|den) gönderildi$)",
    re.IGNORECASE,
)
# A device line is short and says nothing else: these words would be a message.
_NOT_DEVICE = re.compile(
    r"[,;!?]|\b(?:but|if|wait|hold|until|unless|not|only|after|before|aber|mais|pero|maar|"
    r"men|ale|но|не)\b",
    re.IGNORECASE,
)
_URL = re.compile(r"<[^<>\s]{1,2000}>|\bhttps?://\S+")

_LABEL = re.compile(
    r"^\W*\[[^\[\]]{0,120}\b(?:external|extern|ext|internal|intern|interne|public|confidential|"
    r"restricted|official|sensitivity|sensitive|classification|classified|unclassified|general|"
    r"private|caution|warning|use only|distribution|secret|personal|non-business|"
    r"get email from)\b[^\[\]]{0,200}\]\W*$"
    r"|^\W*(?:sensitivity|classification|security classification|data classification|"
    r"information classification|sensitivity label|label)\s*:\s*[\w /&-]{1,60}\W*$"
    r"|^\W*external(?:\s+(?:email|e-mail|sender|message|mail))?\W*$"
    r"|^\W*(?:you don't often get email from|some people who received this message don't often)",
    re.IGNORECASE,
)
_WARNING = re.compile(
    r"^\W*(?:caution|warning|attention|notice|important|external(?:\s+(?:email|e-mail|sender|"
    r"message))?|achtung|vorsicht|attenzione|atenci[óo]n|aten[çc][ãa]o|let op|uwaga|"
    r"внимание)\b",
    re.IGNORECASE,
)
_WARNING_WORDS = re.compile(
    r"outside (?:of )?(?:the|your|our|this) (?:organi[sz]ation|company|network|firm)|"
    r"(?:originated|came|comes|sent) from (?:an? )?(?:outside|external)|"
    r"external (?:sender|source|email|e-mail|message|party)|do not click|don't click|"
    r"unless you recogni[sz]e|links (?:or|and) (?:open )?attachments|phishing|"
    r"externen? (?:Absender|Quelle)|außerhalb (?:Ihrer|der|unserer) Organisation|"
    r"exp[ée]diteur externe|l'ext[ée]rieur|remitente externo|fuera de (?:la|su) organizaci[óo]n|"
    r"mittente esterno|externe afzender|zewnętrzn|внешн",
    re.IGNORECASE,
)


def reply_text(body: str) -> str:
    """The sender's own words in ``body``: no quote, no signature, no banner; "" if none."""
    lines = _normalized(body[:MAX_CHARS]).split("\n", MAX_LINES)[:MAX_LINES]
    finder = Finder(lines)
    kept: list[str] = []
    in_signature = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            kept.append(line)
            i += 1
            continue
        if is_quoted(line):
            # A quote between two parts of the reply separates them.
            if kept and kept[-1]:
                kept.append("")
            in_signature = False
            i += 1
            continue
        span = finder.marker_at(i)
        if span:
            after = next((j for j in range(i + span, len(lines)) if lines[j].strip()), None)
            if after is None or not is_quoted(lines[after]):
                break  # the earlier mail, unquoted: nothing from here on is the reply
            i = after
            continue
        if _SIGNATURE.match(line):
            in_signature = True
        elif not in_signature and not _is_device_line(line):
            kept.append(line)
        i += 1
    return _trimmed(kept)


def _normalized(text: str) -> str:
    text = _INVISIBLE.sub("", _NEWLINES.sub("\n", text))
    text = _ESCAPE.sub(r"\1", _LINK.sub(r"\1", _SPACES.sub(" ", text)))
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _is_device_line(line: str) -> bool:
    text = line.strip()
    if len(text) > 160 or not _DEVICE.match(text):
        return False
    bare = _URL.sub(" ", text).rstrip(".")
    return len(bare.split()) <= 8 and not _NOT_DEVICE.search(bare)


def _trimmed(lines: list[str]) -> str:
    start = _banners_from(lines, 0, 1)
    stop = _banners_from(lines, len(lines) - 1, -1)
    out: list[str] = []
    for line in lines[start : stop + 1]:
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out).strip()


def _banners_from(lines: list[str], i: int, step: int) -> int:
    """The first line from ``i`` on (in the direction of ``step``) that is not a banner."""
    while 0 <= i < len(lines):
        line = lines[i]
        if not line.strip() or _is_rule(line) or _LABEL.match(line[:400]):
            i += step
            continue
        # A warning wraps over several lines: in reading order, take the paragraph it starts.
        start = i
        if step < 0:
            while start > 0 and lines[start - 1].strip() and start > i - 8:
                start -= 1
        end = _warning_end(lines, start)
        if end is None or (step < 0 and end < i):
            return i
        i = end + 1 if step > 0 else start - 1
    return i


def _warning_end(lines: list[str], i: int) -> int | None:
    """The last line of an external-sender warning that starts at line ``i``, or None."""
    if not _WARNING.match(lines[i][:200]):
        return None
    end, text = i, lines[i]
    # Lines of the paragraph belong to it until one ends a sentence.
    while end + 1 < len(lines) and end - i < 8 and lines[end + 1].strip():
        if text.rstrip().endswith((".", "!")) and not _WARNING_WORDS.search(lines[end + 1]):
            break
        end += 1
        text += " " + lines[end]
    return end if _WARNING_WORDS.search(text[:2000]) else None


def _is_rule(line: str) -> bool:
    return bool(re.fullmatch(r"\s*(?:[-_=*]\s*){3,}", line))
