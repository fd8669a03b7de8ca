"""Own the context window (factor 3): render a thread into the messages the model sees.

The system message is the agent's prompt template; the user message is the thread, one
compact block per event. To keep within the token budget, long tool results are shortened
first; if that is not enough, the oldest events after the first message are left out, and the
thread says how many.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import litellm

from app.agent import Agent
from app.events import StoredEvent, ToolResult

# Caps tried in turn on each tool result until the context fits (None: whole results).
RESULT_CAPS: tuple[int | None, ...] = (None, 4000, 2000, 1000, 400, 150)
MIN_KEPT = 4  # the most recent events are never left out
BLOCK_CACHE = 50_000  # rendered event blocks kept (a few MB)

Messages = list[dict[str, str]]


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _shorten(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters not shown]"


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("templates", ""),
        # HTML (email bodies, pages) is escaped; prompts and plain text are not.
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=False,
    )
    env.filters["compact"] = _compact
    env.filters["shorten"] = _shorten
    return env


@dataclass(frozen=True)
class RenderedContext:
    messages: Messages
    tokens: int
    result_cap: int | None
    omitted: int = 0


class ContextRenderer:
    def __init__(self, env: jinja2.Environment, model: str, budget: int) -> None:
        self.env = env
        self.model = model
        self.budget = budget
        self._thread = env.get_template("prompts/thread.j2")
        self._block = env.get_template("prompts/_events.j2").module.block  # type: ignore[attr-defined]
        self._system: dict[str, str] = {}
        # An event's block never changes: rendered and counted once per (event, cap), reused
        # every step. Keyed by the object's id, holding the object, so a reused id cannot
        # match. A context's tokens are the sum of its parts' (a few tokens from counting
        # the whole text at once, where a token would span two parts).
        self._blocks: OrderedDict[tuple[int, int | None], tuple[StoredEvent, str, int]] = (
            OrderedDict()
        )
        self._frames: dict[str, int] = {}  # tokens of all but the blocks, per system prompt

    def system_prompt(self, agent: Agent) -> str:
        if agent.name not in self._system:  # an agent's prompt does not change while we run
            template = self.env.get_template(agent.prompt)
            self._system[agent.name] = template.render(**agent.prompt_vars).strip()
        return self._system[agent.name]

    def render(self, agent: Agent, events: Sequence[StoredEvent]) -> RenderedContext:
        system = self.system_prompt(agent)
        longest = max(
            (len(e.event.result) for e in events if isinstance(e.event, ToolResult)), default=0
        )
        # Only caps that shorten something are worth a render.
        caps = [None, *(c for c in RESULT_CAPS if c is not None and c < longest)]
        for cap in caps:
            rendered = self._render(system, events, cap, omitted=0)
            if rendered.tokens <= self.budget:
                return rendered
        # Still too long: leave out the oldest events, keeping the first message.
        keep = len(events) - 1
        while rendered.tokens > self.budget and keep > MIN_KEPT:
            keep = max(MIN_KEPT, keep * 3 // 4)
            kept = [*events[:1], *events[-keep:]]
            rendered = self._render(system, kept, caps[-1], omitted=len(events) - len(kept))
        return rendered

    def _render(
        self, system: str, events: Sequence[StoredEvent], cap: int | None, omitted: int
    ) -> RenderedContext:
        blocks = [self._rendered_block(e, cap) for e in events]
        thread = self._thread.render(blocks=[text for text, _ in blocks], omitted=omitted)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": thread}]
        tokens = self._frame_tokens(system, omitted) + sum(n for _, n in blocks)
        return RenderedContext(messages, tokens, cap, omitted)

    def _rendered_block(self, stored: StoredEvent, cap: int | None) -> tuple[str, int]:
        """An event's block and its tokens (with the newline after it)."""
        key = (id(stored), cap)
        hit = self._blocks.get(key)
        if hit is not None and hit[0] is stored:
            self._blocks.move_to_end(key)
            return hit[1], hit[2]
        text = str(self._block(stored, cap))
        tokens = self.count_text(text + "\n") if text else 0
        self._blocks[key] = (stored, text, tokens)
        if len(self._blocks) > BLOCK_CACHE:
            self._blocks.popitem(last=False)
        return text, tokens

    def _frame_tokens(self, system: str, omitted: int) -> int:
        """Tokens of everything but the blocks: each message's overhead, the system prompt,
        the thread's frame and, if any events are left out, the line that says so."""
        tokens = self._frames.get(system)
        if tokens is None:
            empty = [{"role": "system", "content": ""}, {"role": "user", "content": ""}]
            tokens = self.count(empty) + self.count_text(system) + self._bare_frame_tokens
            self._frames[system] = tokens
        if omitted:
            marked = self._thread.render(blocks=[""], omitted=omitted)
            tokens += self.count_text(marked) - self._bare_frame_tokens
        return tokens

    @functools.cached_property
    def _bare_frame_tokens(self) -> int:
        return self.count_text(self._thread.render(blocks=[], omitted=0))

    def count(self, messages: Messages) -> int:
        return int(litellm.token_counter(model=self.model, messages=messages))

    def count_text(self, text: str) -> int:
        return int(litellm.token_counter(model=self.model, text=text))
