"""Settings, read once from the environment at start-up.

A missing or invalid value raises :class:`ConfigError` naming the variable, so the process
stops before it serves anything.
"""

from __future__ import annotations

import secrets
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///./relaybot.db",
        description="SQLAlchemy URL. Postgres: postgresql://user:pass@host/db",
    )
    llm_model: str = Field(description="litellm model string, e.g. openai/gpt-4o-mini")
    llm_api_base: str | None = Field(default=None, description="OpenAI-compatible base URL")
    llm_timeout: float = Field(default=60.0, gt=0, description="seconds per model call")
    api_token: str | None = Field(default=None, description="the HTTP API's admin token")
    api_tokens: str = Field(
        default="", description='named, scoped, hashed tokens: [{"name", "scopes", "sha256"}]'
    )
    public_url: str | None = Field(default=None, description="URL people reach us at")
    secret_key: str | None = Field(default=None, min_length=32, description="signing key")
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    default_agent: str = "deploybot"
    extra_agents: str = Field(
        default="", description="module:function, … returning agents to load besides ours"
    )
    llm_factory: str | None = Field(
        default=None, description="module:function(settings) returning an LLM port, not litellm"
    )
    step_cap: Annotated[int, Field(ge=1)] = 20
    context_token_budget: Annotated[int, Field(ge=500)] = 8000
    worker_concurrency: Annotated[int, Field(ge=1, le=512)] = 16
    web_concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1, description="processes `serve` runs on its port (Postgres only)"
    )
    tool_timeout: float = Field(default=120.0, gt=0, description="seconds per tool call")
    llm_retry_backoff: float = Field(
        default=1.0, ge=0, description="seconds before retrying a failed model call (doubles)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = (
        "INFO"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line, with thread_id, agent, event_type"
    )
    slack_bot_token: str | None = Field(default=None, description="xoxb-… bot token")
    slack_signing_secret: str | None = Field(default=None, description="verifies Slack requests")
    slack_app_token: str | None = Field(default=None, description="xapp-… for Socket Mode")
    slack_api_url: str = Field(default="https://slack.com/api/", description="Web API base URL")
    slack_channel_agents: str = Field(default="", description="C0123=deploybot,C0456=refunds")
    smtp_host: str | None = Field(default=None, description="SMTP server for outbound mail")
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    email_from: str | None = Field(default=None, description="the bot's address: bot@example.com")
    email_agents: str = Field(default="", description="refunds@example.com=refunds, …")
    email_inbound_token: str | None = Field(default=None, description="guards the inbound webhooks")
    email_unauthorized: Literal["log", "reply"] = "log"
    email_authserv_id: str = Field(
        default="",
        description="the authserv-id(s) our receiving server stamps on Authentication-Results",
    )
    email_approve_words: str = Field(default="", description="more words that approve: ja, oui")
    email_reject_words: str = Field(default="", description="more words that reject: nein, non")
    email_cancel_words: str = Field(default="", description="more words that cancel")
    email_reply_token_days: Annotated[int, Field(ge=1)] = 30
    email_link_hours: Annotated[int, Field(ge=1)] = 72
    email_max_text_chars: Annotated[int, Field(ge=1_000)] = Field(
        default=50_000, description="characters of a mail's text kept; the rest is cut, marked"
    )
    email_parse_processes: Annotated[int, Field(ge=0, le=32)] = Field(
        default=1, description="processes that parse inbound mail; 0: a thread of this one"
    )
    imap_host: str | None = None
    imap_port: Annotated[int, Field(ge=1, le=65535)] = 993
    imap_username: str | None = None
    imap_password: str | None = None
    imap_folder: str = "INBOX"
    imap_processed_folder: str | None = Field(default=None, description="move processed mail here")
    imap_failed_folder: str = Field(
        default="relaybot-failed", description="mail that can never be processed goes here"
    )
    imap_tls: bool = True
    api_webhook_url: AnyHttpUrl | None = Field(
        default=None, description="where contacts of API threads are POSTed"
    )
    outbox_max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    worker_lease: float = Field(default=60.0, ge=5, description="seconds a claim lasts unrenewed")
    poll_interval: float = Field(default=5.0, gt=0, description="seconds between fallback polls")
    shutdown_grace: float = Field(default=20.0, ge=0, description="seconds to finish a step")

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        for prefix, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if value.startswith(prefix):
                return driver + value[len(prefix) :]
        if value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            return value
        raise ValueError("must be a postgresql:// or sqlite:// URL")

    @field_validator("llm_model")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("slack_channel_agents")
    @classmethod
    def _pairs(cls, value: str) -> str:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            channel, _, agent = pair.partition("=")
            if not channel.strip() or not agent.strip():
                raise ValueError(f"{pair!r} is not CHANNEL=agent")
        return value

    @model_validator(mode="after")
    def _webhooks_need_a_key(self) -> Settings:
        if self.api_webhook_url is not None and self.secret_key is None:
            raise ValueError(
                "SECRET_KEY is required with API_WEBHOOK_URL (receivers verify signatures)"
            )
        if self.email_from and self.secret_key is None:
            raise ValueError("SECRET_KEY is required with EMAIL_FROM (reply tokens, links)")
        if self.web_concurrency > 1 and not self.database_url.startswith("postgresql"):
            raise ValueError("WEB_CONCURRENCY above 1 needs Postgres (SQLite takes one process)")
        return self

    @property
    def channel_agents(self) -> dict[str, str]:
        pairs = (p.partition("=") for p in self.slack_channel_agents.split(",") if p.strip())
        return {c.strip(): a.strip() for c, _, a in pairs}

    @field_validator("email_agents")
    @classmethod
    def _address_pairs(cls, value: str) -> str:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            address, _, agent = pair.partition("=")
            if "@" not in address or not agent.strip():
                raise ValueError(f"{pair!r} is not address=agent")
        return value

    @property
    def address_agents(self) -> dict[str, str]:
        pairs = (p.partition("=") for p in self.email_agents.split(",") if p.strip())
        return {a.strip().lower(): g.strip() for a, _, g in pairs}

    @property
    def email_enabled(self) -> bool:
        return bool(self.smtp_host and self.email_from)

    @property
    def imap_enabled(self) -> bool:
        return bool(self.imap_host and self.imap_username and self.imap_password)

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_bot_token and self.slack_signing_secret)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def bind_host(self) -> str:
        """Without an API token the API is open, so it only listens on loopback."""
        return self.host if self.api_token or self.api_tokens.strip() else "127.0.0.1"

    @property
    def base_url(self) -> str:
        host = "localhost" if self.bind_host in ("0.0.0.0", "::") else self.bind_host
        return (self.public_url or f"http://{host}:{self.port}").rstrip("/")

    @cached_property
    def signing_key(self) -> str:
        return self.secret_key or secrets.token_urlsafe(32)


def load_settings(**overrides: object) -> Settings:
    """Read the environment; turn pydantic's report into one ConfigError per first problem."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = "is required" if first["type"] == "missing" else first["msg"]
        if first["loc"]:
            variable = str(first["loc"][0]).upper()
        else:  # a rule across settings names its variable first
            problem = problem.removeprefix("Value error, ")
            variable, _, problem = problem.partition(" ")
        raise ConfigError(variable, problem) from None
