"""The HTTP API (factor 6): launch a thread, read it, answer it. Routes only translate."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.channel import Channel, ChannelContext
from app.errors import (
    IdempotencyMismatch,
    NotAllowed,
    NotAwaiting,
    ThreadNotFound,
    UnknownAgent,
    VersionConflict,
)
from app.policy import Principal
from app.service import Idempotency, Threads
from app.tokens import ANONYMOUS, ApiToken, ApiTokens


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LaunchBody(_Body):
    message: str = Field(min_length=1, max_length=100_000)
    agent: str | None = None


class ApprovalBody(_Body):
    type: Literal["approval"]
    approved: bool
    comment: str | None = Field(default=None, max_length=10_000)
    # The seq of the approval_requested event this answers: a late answer to an older
    # request is refused (409) instead of deciding a newer one.
    request_seq: int | None = None
    # The request's digest (approval_requested.data.digest): a decision for other
    # arguments than these is refused (409).
    digest: str | None = Field(default=None, max_length=64)


class CancelBody(_Body):
    """Withdraw the pending approval (the requester, or someone who may decide it)."""

    type: Literal["cancel"]
    comment: str | None = Field(default=None, max_length=10_000)
    request_seq: int | None = None


class TextResponseBody(_Body):
    type: Literal["response"]
    response: str = Field(min_length=1, max_length=100_000)


ResponseBody = Annotated[ApprovalBody | CancelBody | TextResponseBody, Field(discriminator="type")]


class EventOut(BaseModel):
    seq: int
    type: str
    data: dict[str, Any]
    actor: str | None
    created_at: str


class LaunchOut(BaseModel):
    thread_id: str
    status: str
    events: list[EventOut]
    response_url: str


class ThreadOut(LaunchOut):
    agent: str
    created_at: str
    updated_at: str


class RespondOut(BaseModel):
    thread_id: str
    status: str
    seq: int


def _threads(request: Request) -> Threads:
    threads: Threads = request.app.state.threads
    return threads


def _token(request: Request, authorization: Annotated[str | None, Header()] = None) -> ApiToken:
    """The API token the request carries (the anonymous one when the API is open)."""
    tokens: ApiTokens = request.app.state.api_tokens
    scheme, _, given = (authorization or "").partition(" ")
    token = tokens.find(given) if tokens.open or scheme.lower() == "bearer" else None
    if token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


def scoped(scope: str) -> Any:
    def check(token: Annotated[ApiToken, Depends(_token)]) -> ApiToken:
        if not token.allows(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this token lacks the {scope} scope")
        return token

    return Depends(check)


def principal(token: ApiToken) -> Principal:
    return Principal("api", token.name, "api token")


ThreadsDep = Annotated[Threads, Depends(_threads)]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]

router = APIRouter(dependencies=[Depends(_token)])


@router.post("/thread", status_code=status.HTTP_201_CREATED, response_model=LaunchOut)
async def launch(
    body: LaunchBody,
    threads: ThreadsDep,
    token: Annotated[ApiToken, scoped("launch")],
    idempotency_key: IdemKey = None,
) -> Any:
    # Keys are per token: another token's key names another request.
    scope = f"{token.name}/thread"
    idem = idempotency_key and Idempotency.of("api", scope, idempotency_key, body.model_dump())
    return await threads.launch(
        body.message,
        agent=body.agent,
        idempotency=idem or None,
        author=token.name,
        verified=token is not ANONYMOUS,
    )


@router.get("/thread/{thread_id}", response_model=ThreadOut)
async def get_thread(
    thread_id: str, threads: ThreadsDep, _: Annotated[ApiToken, scoped("read")]
) -> Any:
    return await threads.get(thread_id)


@router.post(
    "/thread/{thread_id}/response", status_code=status.HTTP_202_ACCEPTED, response_model=RespondOut
)
async def respond(
    thread_id: str,
    body: ResponseBody,
    threads: ThreadsDep,
    token: Annotated[ApiToken, Depends(_token)],
    idempotency_key: IdemKey = None,
) -> Any:
    scope = f"{token.name}/thread/{thread_id}/response"
    idem = idempotency_key and Idempotency.of("api", scope, idempotency_key, body.model_dump())
    if isinstance(body, ApprovalBody):
        # Who may decide is the agent's policy, checked by the core like for every channel.
        return await threads.respond_approval(
            thread_id,
            approved=body.approved,
            principal=principal(token),
            comment=body.comment,
            idempotency=idem or None,
            request_seq=body.request_seq,
            digest=body.digest,
        )
    if not token.allows("respond"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token lacks the respond scope")
    if isinstance(body, CancelBody):
        return await threads.cancel(
            thread_id,
            principal=principal(token),
            comment=body.comment,
            idempotency=idem or None,
            request_seq=body.request_seq,
        )
    return await threads.respond_text(
        thread_id, body.response, idempotency=idem or None, author=token.name
    )


def install(app: FastAPI) -> None:
    app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def error(code: int) -> Any:
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": getattr(exc, "message", str(exc))}, status_code=code)

        return handler

    app.add_exception_handler(ThreadNotFound, error(404))
    app.add_exception_handler(NotAllowed, error(403))
    app.add_exception_handler(NotAwaiting, error(409))
    app.add_exception_handler(VersionConflict, error(409))  # busy beyond our retries
    app.add_exception_handler(UnknownAgent, error(422))
    app.add_exception_handler(IdempotencyMismatch, error(422))


class ApiPlugin:
    """The HTTP API as a relaybot channel (``relaybot.channels`` entry point): its routes
    only; API threads are answered by the webhook channel when one is configured."""

    name = "api"

    def routes(self, app: FastAPI) -> None:
        install(app)

    def build(self, ctx: ChannelContext) -> Channel | None:
        return None


plugin = ApiPlugin()
