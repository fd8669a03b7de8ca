"""The HTTP API (factor 6): launch a thread, read it, answer it. Routes only translate."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.errors import (
    IdempotencyMismatch,
    NotAwaiting,
    ThreadNotFound,
    UnknownAgent,
    VersionConflict,
)
from app.service import Idempotency, Threads


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


class TextResponseBody(_Body):
    type: Literal["response"]
    response: str = Field(min_length=1, max_length=100_000)


ResponseBody = Annotated[ApprovalBody | TextResponseBody, Field(discriminator="type")]


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


def _authorize(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token: str | None = request.app.state.settings.api_token
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


ThreadsDep = Annotated[Threads, Depends(_threads)]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]

router = APIRouter(dependencies=[Depends(_authorize)])


@router.post("/thread", status_code=status.HTTP_201_CREATED, response_model=LaunchOut)
async def launch(body: LaunchBody, threads: ThreadsDep, idempotency_key: IdemKey = None) -> Any:
    idem = idempotency_key and Idempotency.of("api", "thread", idempotency_key, body.model_dump())
    return await threads.launch(body.message, agent=body.agent, idempotency=idem or None)


@router.get("/thread/{thread_id}", response_model=ThreadOut)
async def get_thread(thread_id: str, threads: ThreadsDep) -> Any:
    return await threads.get(thread_id)


@router.post(
    "/thread/{thread_id}/response", status_code=status.HTTP_202_ACCEPTED, response_model=RespondOut
)
async def respond(
    thread_id: str, body: ResponseBody, threads: ThreadsDep, idempotency_key: IdemKey = None
) -> Any:
    scope = f"thread/{thread_id}/response"
    idem = idempotency_key and Idempotency.of("api", scope, idempotency_key, body.model_dump())
    if isinstance(body, ApprovalBody):
        return await threads.respond_approval(
            thread_id,
            approved=body.approved,
            comment=body.comment,
            idempotency=idem or None,
            request_seq=body.request_seq,
        )
    return await threads.respond_text(thread_id, body.response, idempotency=idem or None)


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
    app.add_exception_handler(NotAwaiting, error(409))
    app.add_exception_handler(VersionConflict, error(409))  # busy beyond our retries
    app.add_exception_handler(UnknownAgent, error(422))
    app.add_exception_handler(IdempotencyMismatch, error(422))
