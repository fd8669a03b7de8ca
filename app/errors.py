"""Every error relaybot raises on purpose.

Each carries a short, user-facing ``message`` (safe to show in a channel: no stack traces,
no secrets) and typed fields for code that handles it.
"""

from __future__ import annotations


class RelaybotError(Exception):
    """Base class: ``message`` is what a person may be shown."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RelaybotError):
    """A setting is missing or invalid; raised at start-up, naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class ThreadNotFound(RelaybotError):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id} not found")
        self.thread_id = thread_id


class UnknownAgent(RelaybotError):
    def __init__(self, agent: str, known: list[str]) -> None:
        super().__init__(f"unknown agent {agent!r}; known agents: {', '.join(sorted(known))}")
        self.agent = agent


class NotAwaiting(RelaybotError):
    """The thread is not waiting for the kind of answer that was sent."""

    def __init__(self, thread_id: str, status: str, sent: str) -> None:
        super().__init__(f"thread {thread_id} is {status}; it does not take {sent} now")
        self.thread_id = thread_id
        self.status = status
        self.sent = sent


class NotAllowed(RelaybotError):
    """The person may not do this: the agent's approval policy does not list them, or
    four-eyes keeps the requester from approving their own request."""

    def __init__(self, thread_id: str, principal: str, reason: str) -> None:
        super().__init__(reason)
        self.thread_id = thread_id
        self.principal = principal
        self.reason = reason


class SeqOutOfRange(RelaybotError):
    """A position in a thread that it does not have."""

    def __init__(self, thread_id: str, seq: int, version: int) -> None:
        super().__init__(f"thread {thread_id} has events 1 to {version}; there is no seq {seq}")
        self.thread_id = thread_id
        self.seq = seq


class IdempotencyMismatch(RelaybotError):
    """An idempotency key was used again with a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request")
        self.key = key


class VersionConflict(RelaybotError):
    """Another writer appended first; reload and decide again."""

    def __init__(self, thread_id: str, expected: int) -> None:
        super().__init__(f"thread {thread_id} changed since version {expected}")
        self.thread_id = thread_id
        self.expected = expected


class LLMError(RelaybotError):
    """One failed model call. ``kind`` is one of: provider, timeout, invalid_output, refused."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ModeRefused(LLMError):
    """The server rejected the structured-output mode itself (not the request's content)."""

    def __init__(self, mode: str, message: str) -> None:
        super().__init__("refused", f"{mode} refused: {message}")
        self.mode = mode


class ToolError(RelaybotError):
    """A tool handler failed in a way the model should hear about."""


class ToolOutcomeUnknown(ToolError):
    """The tool's effect may or may not have happened (a timeout after the request left)."""


class SendFailed(RelaybotError):
    """An outbound message was not delivered.

    ``retry_after``: the provider said when to try again (seconds). ``permanent``: trying
    again cannot help (a 4xx such as an unknown channel): the row goes dead at once.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent
