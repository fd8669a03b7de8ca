"""Email as a relaybot channel: registered under the ``relaybot.channels`` entry point.

On when ``SMTP_HOST`` and ``EMAIL_FROM`` are set. It answers email threads (to the customer
who wrote), carries the approval traffic of every agent whose policy names email approvers,
reads the mailbox over IMAP when ``IMAP_*`` is set, and serves the provider webhooks and the
pages behind one-click approval links.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from app.channel import Channel, ChannelContext
from app.store.quarantine import Quarantine
from channels.email import web
from channels.email.imap import ImapFetcher
from channels.email.inbound import EmailInbound
from channels.email.intake import Intake
from channels.email.outbound import EmailSender
from channels.email.parsing import Parser
from channels.email.tokens import LinkSigner


@dataclass(frozen=True)
class EmailState:
    inbound: EmailInbound
    links: LinkSigner
    intake: Intake
    fetcher: ImapFetcher | None = None


class EmailPlugin:
    name = "email"

    def routes(self, app: FastAPI) -> None:
        web.install(app)

    def build(self, ctx: ChannelContext) -> Channel | None:
        s = ctx.settings
        if not s.email_enabled:
            return None
        links = LinkSigner(s.signing_key, s.email_link_hours * 3600)
        sender = EmailSender(s, ctx.env, ctx.outbox, links)
        inbound = EmailInbound(ctx.threads, s, sender, ctx.outbox)
        parser = Parser(processes=s.email_parse_processes, max_text_chars=s.email_max_text_chars)
        intake = Intake(inbound, Quarantine(ctx.store.engine), parser)
        fetcher = None
        background = []
        if s.imap_enabled:
            fetcher = ImapFetcher(s, intake, poll_interval=s.poll_interval)
            background.append(fetcher.run)
        return Channel(
            name="email",
            sender=sender,
            answers=("email",),
            approvals_for=[n for n in ctx.agents if ctx.policies.everyone(n, "email")],
            background=background,
            state=EmailState(inbound, links, intake, fetcher),
            close=parser.close,
        )


plugin = EmailPlugin()
