"""Email's HTTP routes: inbound webhooks (raw MIME, and Postmark's JSON), and the pages behind
one-click approval links. A link's GET only shows what will run (mail scanners open links);
the POST decides, once: the link's receipt is written with the decision."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from app.channel import channel_state
from app.context import make_environment
from app.errors import NotAllowed, NotAwaiting, ThreadNotFound
from app.policy import Principal
from app.service import Idempotency
from channels.email.inbound import EmailInbound
from channels.email.intake import Intake, Unavailable
from channels.email.tokens import LinkSigner, TokenError

if TYPE_CHECKING:
    from channels.email.plugin import EmailState

MAX_MESSAGE_BYTES = 40_000_000
NEVER_PROCESSED = 422  # what /email/inbound answers for mail held in quarantine
RETRY_AFTER = 30  # seconds, with a 503


def _check_token(request: Request, expected: str | None) -> None:
    if expected is None:
        raise HTTPException(404, "inbound email webhooks need EMAIL_INBOUND_TOKEN")
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() == "basic":  # Postmark: https://user:TOKEN@host/...
        value = base64.b64decode(value.encode()).decode(errors="replace").partition(":")[2]
    if not secrets.compare_digest(value.encode(), expected.encode()):
        raise HTTPException(401, "wrong or missing token", headers={"WWW-Authenticate": "Bearer"})


async def _body(request: Request) -> bytes:
    if int(request.headers.get("content-length") or 0) > MAX_MESSAGE_BYTES:
        raise HTTPException(413, "message too large")
    return await request.body()


def install(app: FastAPI) -> None:
    page = make_environment().get_template("email/decide.html.j2")

    def inbound(request: Request) -> EmailInbound:
        return _state(request).inbound

    @app.post("/email/inbound", include_in_schema=False)
    async def raw_mime(request: Request) -> JSONResponse:
        intake = _state(request).intake
        _check_token(request, request.app.state.settings.email_inbound_token)
        return await _take(intake, await _body(request), "webhook", NEVER_PROCESSED)

    @app.post("/email/postmark", include_in_schema=False)
    async def postmark(request: Request) -> JSONResponse:
        intake = _state(request).intake
        _check_token(request, request.app.state.settings.email_inbound_token)
        # Decoded with the mail, off the event loop. Postmark stops retrying on a 403 only
        # (any other status is retried for some 10 h): that is the answer for JSON that can
        # never be taken in.
        return await _take(intake, await _body(request), "postmark", 403)

    @app.get("/email/decide/{token}", include_in_schema=False)
    async def show(token: str, request: Request) -> HTMLResponse:
        handler = inbound(request)
        link, pending, status = await _link(request, handler, token)
        if status is not None:
            return status
        decision = link["d"]
        title = "Approve this step?" if decision == "approve" else "Reject this step?"
        return HTMLResponse(
            page.render(title=title, form=True, decision=decision, message=None, **pending)
        )

    @app.post("/email/decide/{token}", include_in_schema=False)
    async def act(token: str, request: Request) -> HTMLResponse:
        handler = inbound(request)
        link, _, status = await _link(request, handler, token)
        if status is not None:
            return status
        form = parse_qs((await request.body()).decode(errors="replace"))
        reason = (form.get("reason") or [""])[0].strip() or None
        key = hashlib.sha256(token.encode()).hexdigest()
        idem = Idempotency.of("email", "link", key, {})
        who = Principal("link", "email link", "signed link", {"sent_to": link.get("r") or []})
        try:
            await handler.threads.respond_approval(
                link["t"],
                approved=link["d"] == "approve",
                principal=who,
                comment=reason,
                idempotency=idem,
                request_seq=link["s"],
            )
        except (NotAwaiting, ThreadNotFound):
            return _done(page, "Already decided", "This request was already decided.", 409)
        except NotAllowed as exc:
            return _done(page, "Not allowed", f"This link cannot decide: {exc.reason}.", 403)
        verdict = "Approved" if link["d"] == "approve" else "Rejected"
        return _done(page, verdict, "Thank you: the agent carries on.", 200)

    async def _link(
        request: Request, handler: EmailInbound, token: str
    ) -> tuple[dict[str, Any], dict[str, Any], HTMLResponse | None]:
        signer: LinkSigner = _state(request).links
        try:
            link = signer.read(token)
        except TokenError as exc:
            code = 410 if exc.reason == "expired" else 403
            return {}, {}, _done(page, "Link not valid", f"This link is {exc.reason}.", code)
        used = await handler.threads.store.get_receipt(
            "email", f"link:{hashlib.sha256(token.encode()).hexdigest()}"
        )
        if used is not None:
            return link, {}, _done(page, "Link already used", "This link works once.", 410)
        try:
            _, pending, request_seq = await handler.threads.pending_approval(link["t"])
        except ThreadNotFound:
            return link, {}, _done(page, "Not found", "This request no longer exists.", 404)
        if pending is None or request_seq != link["s"]:
            return (
                link,
                {},
                _done(page, "Already decided", "This request was already decided.", 409),
            )
        return link, {"intent": pending.intent, "arguments": pending.arguments, "why": None}, None


async def _take(intake: Intake, raw: bytes, source: str, never: int) -> JSONResponse:
    """200 with what became of the message; ``never`` (a 4xx) when it can never be processed
    (it is held: ``relaybot intake list``); 503 when it cannot be processed now (the
    provider retries)."""
    try:
        taken = await intake.take(raw, source)
    except Unavailable:
        busy = {"detail": "cannot take mail now; try again later"}
        return JSONResponse(busy, 503, headers={"Retry-After": str(RETRY_AFTER)})
    if taken.held is not None:
        body = {"action": "quarantined", "id": taken.held, "reason": taken.reason}
        return JSONResponse(body, never)
    assert taken.outcome is not None
    return JSONResponse(taken.outcome.__dict__)


def _state(request: Request) -> EmailState:
    state: EmailState | None = channel_state(request, "email")
    if state is None:
        raise HTTPException(404, "email is not configured")
    return state


def _done(page: jinja2.Template, title: str, message: str, status: int) -> HTMLResponse:
    body = page.render(title=title, message=message, form=False, intent=None, decision=None)
    return HTMLResponse(body, status_code=status)
