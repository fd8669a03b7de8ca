"""Email's HTTP routes: inbound webhooks (raw MIME, and Postmark's JSON), and the pages behind
one-click approval links. A link's GET only shows what will run (mail scanners open links);
the POST decides, once: the link's receipt is written with the decision."""

from __future__ import annotations

import base64
import hashlib
import secrets
from email.message import EmailMessage
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
from channels.email.tokens import LinkSigner, TokenError

if TYPE_CHECKING:
    from channels.email.plugin import EmailState

MAX_MESSAGE_BYTES = 40_000_000


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


def postmark_to_mime(data: dict[str, Any]) -> bytes:
    """Postmark's inbound JSON as the message it describes (attachments as placeholders of
    their declared size: their content is not needed)."""
    msg = EmailMessage()
    for header in data.get("Headers", []):
        if header.get("Name", "").lower() in {
            "in-reply-to",
            "references",
            "authentication-results",
            "delivered-to",
        }:
            msg[header["Name"]] = header["Value"]
    msg["From"] = data.get("From", "")
    msg["To"] = data.get("To", "")
    if data.get("Cc"):
        msg["Cc"] = data["Cc"]
    msg["Subject"] = data.get("Subject", "")
    message_id = data.get("MessageID") or ""
    msg["Message-ID"] = message_id if message_id.startswith("<") else f"<{message_id}>"
    if data.get("TextBody"):
        msg.set_content(data["TextBody"])
        if data.get("HtmlBody"):
            msg.add_alternative(data["HtmlBody"], subtype="html")
    else:
        msg.set_content(data.get("HtmlBody", ""), subtype="html")
    for attachment in data.get("Attachments", []):
        maintype, _, subtype = attachment.get("ContentType", "application/octet-stream").partition(
            "/"
        )
        msg.add_attachment(
            b"\0" * min(int(attachment.get("ContentLength", 0)), 1),
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=attachment.get("Name"),
        )
    return bytes(msg)


def install(app: FastAPI) -> None:
    page = make_environment().get_template("email/decide.html.j2")

    def inbound(request: Request) -> EmailInbound:
        return _state(request).inbound

    @app.post("/email/inbound", include_in_schema=False)
    async def raw_mime(request: Request) -> JSONResponse:
        handler = inbound(request)
        _check_token(request, request.app.state.settings.email_inbound_token)
        outcome = await handler.receive(await _body(request))
        return JSONResponse(outcome.__dict__)

    @app.post("/email/postmark", include_in_schema=False)
    async def postmark(request: Request) -> JSONResponse:
        handler = inbound(request)
        _check_token(request, request.app.state.settings.email_inbound_token)
        outcome = await handler.receive(postmark_to_mime(await request.json()))
        return JSONResponse(outcome.__dict__)

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


def _state(request: Request) -> EmailState:
    state: EmailState | None = channel_state(request, "email")
    if state is None:
        raise HTTPException(404, "email is not configured")
    return state


def _done(page: jinja2.Template, title: str, message: str, status: int) -> HTMLResponse:
    body = page.render(title=title, message=message, form=False, intent=None, decision=None)
    return HTMLResponse(body, status_code=status)
