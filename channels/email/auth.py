"""Did the sender's domain vouch for this mail? Read from our own receiving server's
``Authentication-Results`` header (RFC 8601), parsed with the ``authres`` library.

A sender writes every header of their message, an ``Authentication-Results`` too, so only a
header whose authserv-id is one of ours (``EMAIL_AUTHSERV_ID``: the id our receiving server
stamps, such as ``mx.google.com``) and that sits above every other such header (the one our
server added last) counts. Its verdict:

- ``pass``: DMARC passed, or a DKIM signature of the From domain verified;
- ``fail``: DMARC failed, or DKIM (or SPF, with no DKIM pass) failed;
- ``none``: no verdict of ours (not configured, no header of ours, or nothing conclusive).

Without ``EMAIL_AUTHSERV_ID`` nothing can pass, but a header that reports a failure still
counts as one: forging a failure only hurts the forger.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import authres

Verdict = Literal["pass", "fail", "none"]
CHECKS = ("dmarc", "dkim", "spf")


@dataclass(frozen=True)
class SenderCheck:
    verdict: Verdict = "none"
    authserv_id: str | None = None
    results: dict[str, str] = field(default_factory=dict)  # method -> result, ours only

    def evidence(self) -> dict[str, str]:
        found = {"verdict": self.verdict, **self.results}
        if self.authserv_id:
            found["authserv_id"] = self.authserv_id
        return found


def check_sender(
    headers: Sequence[str], sender: str, authserv_ids: Iterable[str] = ()
) -> SenderCheck:
    """The verdict on ``sender`` (the From address) from the message's
    ``Authentication-Results`` headers, topmost first."""
    ours = {a.strip().lower() for a in authserv_ids if a.strip()}
    domain = sender.rpartition("@")[2].lower()
    parsed = [p for p in (_parse(h) for h in headers[:50]) if p is not None]
    if ours:
        mine = next((p for p in parsed if str(p.authserv_id).lower() in ours), None)
        if mine is None:
            return SenderCheck()
        return _verdict(mine, domain)
    # Not configured: trust no pass; a reported failure stands.
    for header in parsed:
        found = _verdict(header, domain)
        if found.verdict == "fail":
            return SenderCheck("fail", None, found.results)
    return SenderCheck()


def _parse(value: str) -> authres.AuthenticationResultsHeader | None:
    text = " ".join(str(value).split())
    if not text.lower().startswith("authentication-results:"):
        text = f"Authentication-Results: {text}"
    try:
        return authres.AuthenticationResultsHeader.parse(text)
    except Exception:  # authres raises its own errors and, on odd input, others
        return None


def _verdict(header: authres.AuthenticationResultsHeader, domain: str) -> SenderCheck:
    results: dict[str, list[tuple[str, str | None]]] = {}
    for result in header.results:
        method = str(result.method).lower()
        if method not in CHECKS:
            continue
        signer = next(
            (
                str(p.value).lower()
                for p in result.properties or ()
                if str(p.type) == "header" and str(p.name) in ("d", "from")
            ),
            None,
        )
        results.setdefault(method, []).append((str(result.result).lower(), signer))
    summary = {m: ",".join(r for r, _ in rs) for m, rs in results.items()}
    authserv = str(header.authserv_id)
    dmarc = [r for r, _ in results.get("dmarc", [])]
    dkim = results.get("dkim", [])
    aligned_dkim_pass = any(r == "pass" and _aligned(d, domain) for r, d in dkim)
    if "fail" in dmarc:
        return SenderCheck("fail", authserv, summary)
    if "pass" in dmarc or aligned_dkim_pass:
        return SenderCheck("pass", authserv, summary)
    if any(r == "fail" for r, _ in dkim) or any(
        r == "fail" and not dkim for r, _ in results.get("spf", [])
    ):
        return SenderCheck("fail", authserv, summary)
    return SenderCheck("none", authserv, summary)


def _aligned(signer: str | None, domain: str) -> bool:
    """Relaxed DMARC alignment: the signing domain is the From domain or a parent of it."""
    if not signer or not domain:
        return False
    return domain == signer or ("." in signer and domain.endswith("." + signer))
