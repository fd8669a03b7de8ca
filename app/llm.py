"""The LLM port, and its litellm implementation (factors 1 and 4).

``LLM.choose`` returns the raw action the model picked (a dict with ``intent``); validating it
against the agent's union is the engine's job, so fakes and real models share that path.

Structured output is asked for in the first mode the server accepts, in this order:

1. ``tools_required``: one tool per action, ``tool_choice="required"`` (hosted providers);
2. ``tools_auto``: the same tools, ``tool_choice="auto"`` (llama.cpp's server and others);
3. ``json_schema``: ``response_format`` with the action union's JSON schema;
4. ``json_object``: ``response_format={"type": "json_object"}``, the schema in the prompt.

A mode the server refuses (HTTP 400/422, or litellm saying the parameter is unsupported)
falls through to the next; the first mode that then works is remembered for that model.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

import litellm
from litellm import exceptions as llm_errors

from app.agent import Action, Agent
from app.errors import LLMError, ModeRefused

log = logging.getLogger(__name__)

MODES = ("tools_required", "tools_auto", "json_schema", "json_object")
WRAPPER_KEY = "next_step"


@dataclass(frozen=True)
class LLMReply:
    action: dict[str, Any]
    model: str
    mode: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None


class LLM(Protocol):
    async def choose(self, messages: list[dict[str, str]], agent: Agent) -> LLMReply:
        """Return the model's next action as a dict; raise LLMError on failure."""
        ...


# -- schemas -----------------------------------------------------------------------------


def tool_specs(agent: Agent) -> list[dict[str, Any]]:
    """One function per action: name = intent, parameters = the action's other fields.

    Built once per set of actions (pydantic's schema generation took ~1.5 ms a call); each
    caller gets its own copy, free to change."""
    cached = _TOOL_SPECS.get(agent.action_models)
    if cached is None:
        specs = [
            {
                "type": "function",
                "function": {
                    "name": model.model_fields["intent"].default,
                    "description": (model.__doc__ or "").strip(),
                    "parameters": _action_schema(model),
                },
            }
            for model in agent.action_models
        ]
        cached = _TOOL_SPECS[agent.action_models] = json.dumps(specs)
    result: list[dict[str, Any]] = json.loads(cached)
    return result


_TOOL_SPECS: dict[tuple[type[Action], ...], str] = {}
_UNION_SCHEMAS: dict[tuple[type[Action], ...], str] = {}


def _action_schema(model: type[Action]) -> dict[str, Any]:
    schema = copy.deepcopy(model.model_json_schema())
    schema.pop("title", None)
    schema.pop("description", None)
    schema["properties"].pop("intent", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "intent"]
    schema["additionalProperties"] = False
    return schema


def union_schema(agent: Agent) -> dict[str, Any]:
    """The action union wrapped in an object, as JSON-schema response formats require."""
    cached = _UNION_SCHEMAS.get(agent.action_models)
    if cached is None:
        inner = agent.action_adapter.json_schema()
        defs = inner.pop("$defs", {})
        cached = _UNION_SCHEMAS[agent.action_models] = json.dumps(
            {
                "type": "object",
                "properties": {WRAPPER_KEY: inner},
                "required": [WRAPPER_KEY],
                "additionalProperties": False,
                "$defs": defs,
            }
        )
    result: dict[str, Any] = json.loads(cached)
    return result


def _json_instructions(agent: Agent) -> str:
    return (
        "Reply with only a JSON object of the form "
        f'{{"{WRAPPER_KEY}": {{"intent": ..., ...}}}} that matches this JSON schema:\n'
        + json.dumps(union_schema(agent), separators=(",", ":"))
    )


# -- parsing -----------------------------------------------------------------------------


def parse_tool_call(name: str, arguments: str | None) -> dict[str, Any]:
    try:
        args = json.loads(arguments or "{}") or {}
    except json.JSONDecodeError as exc:
        raise LLMError("invalid_output", f"{name}: arguments are not JSON ({exc.msg})") from None
    if not isinstance(args, dict):
        raise LLMError("invalid_output", f"{name}: arguments are not an object")
    return {**args, "intent": name}


def parse_json_content(content: str | None) -> dict[str, Any]:
    text = (content or "").strip()
    if text.startswith("```"):  # tolerate a fenced block
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise LLMError("invalid_output", f"reply is not JSON: {_clip(text)}") from None
    if isinstance(value, dict) and isinstance(value.get(WRAPPER_KEY), dict):
        value = value[WRAPPER_KEY]
    if not isinstance(value, dict) or "intent" not in value:
        raise LLMError("invalid_output", f"reply has no intent: {_clip(text)}")
    return value


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


# -- litellm -----------------------------------------------------------------------------


class LiteLLM:
    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.timeout = timeout
        self._first_mode = 0  # index into MODES of the first mode worth trying
        litellm.suppress_debug_info = True  # no "Give Feedback" banners on stdout

    @property
    def mode(self) -> str:
        return MODES[self._first_mode]

    async def choose(self, messages: list[dict[str, str]], agent: Agent) -> LLMReply:
        refused: list[str] = []
        for index in range(self._first_mode, len(MODES)):
            mode = MODES[index]
            try:
                reply = await self._call(mode, messages, agent)
            except ModeRefused as exc:
                log.info("model %s refused %s: %s", self.model, mode, exc.message)
                refused.append(mode)
                continue
            if refused:
                log.warning("model %s: using %s from now on", self.model, mode)
                self._first_mode = index
            return reply
        raise LLMError(
            "refused", f"the model server refused every output mode ({', '.join(refused)})"
        )

    async def _call(self, mode: str, messages: list[dict[str, str]], agent: Agent) -> LLMReply:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "timeout": self.timeout,
            "max_retries": 0,  # the engine retries, and records each failure
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if mode.startswith("tools"):
            kwargs["tools"] = tool_specs(agent)
            kwargs["tool_choice"] = "required" if mode == "tools_required" else "auto"
        else:
            messages = [*messages, {"role": "system", "content": _json_instructions(agent)}]
            if mode == "json_schema":
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": WRAPPER_KEY, "schema": union_schema(agent)},
                }
            else:
                kwargs["response_format"] = {"type": "json_object"}
        started = time.perf_counter()
        try:
            response = await litellm.acompletion(messages=messages, **kwargs)
        except (llm_errors.UnsupportedParamsError, llm_errors.UnprocessableEntityError) as exc:
            raise ModeRefused(mode, _short(exc)) from None
        except llm_errors.ContextWindowExceededError as exc:
            raise LLMError("provider", f"context window exceeded: {_short(exc)}") from None
        except llm_errors.BadRequestError as exc:
            if _about_the_mode(exc):
                raise ModeRefused(mode, _short(exc)) from None
            raise LLMError("provider", f"provider refused the request: {_short(exc)}") from None
        except llm_errors.Timeout:
            raise LLMError(
                "timeout", f"no answer from the model within {self.timeout:g}s"
            ) from None
        except Exception as exc:  # provider errors (5xx, rate limits, connection) and the rest
            status = getattr(exc, "status_code", None)
            what = f"provider error {status}" if status else "provider error"
            raise LLMError("provider", f"{what}: {_short(exc)}") from None
        latency_ms = (time.perf_counter() - started) * 1000
        message = response.choices[0].message
        if message.tool_calls:
            call = message.tool_calls[0]
            action = parse_tool_call(call.function.name, call.function.arguments)
        else:
            action = parse_json_content(message.content)
        usage = getattr(response, "usage", None)
        return LLMReply(
            action=action,
            model=str(getattr(response, "model", None) or self.model),
            mode=mode,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost_usd=_cost(response),
            latency_ms=round(latency_ms, 2),
        )


def _cost(response: Any) -> float | None:
    """The call's price from litellm's local price map; None for a model it does not know.
    litellm works it out as the call returns; it is only read here."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    return round(float(cost), 8) if cost else None


# What a server that lacks an output mode complains about.
_MODE_WORDS = ("tool", "function", "response_format", "json_schema", "json_object", "schema")


def _about_the_mode(exc: BaseException) -> bool:
    text = str(getattr(exc, "message", None) or exc).lower()
    return any(word in text for word in _MODE_WORDS)


_WRAPPER_PREFIX = re.compile(r"^(?:litellm\.)?\w+(?:Error|Exception)(?: - |: )")


def _short(exc: BaseException) -> str:
    """The provider's own words, without litellm's stacked class-name prefixes."""
    text = str(getattr(exc, "message", None) or exc)
    while (stripped := _WRAPPER_PREFIX.sub("", text, count=1)) != text:
        text = stripped
    return _clip(text, 200)
