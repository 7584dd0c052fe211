"""The provider-neutral conversation model shared by the agent loop and every provider adapter.

Adapters (OpenAI Chat Completions, Anthropic Messages, the on-device `local` router) translate
between these types and their wire formats; the agent loop only ever sees these.
Everything here is plain data, JSON-serialisable via `to_json`/`from_json` (sessions store it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


@dataclass
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass
class ToolCallPart:
    id: str
    name: str
    arguments: dict[str, Any]  # parsed JSON object; adapters handle the string form
    type: Literal["tool_call"] = "tool_call"
    # Set only when the model's argument string was not a JSON object (truncated, invalid JSON,
    # an array...): the string exactly as streamed, and `arguments` is then {}. The loop must not
    # run the tool; it answers with ToolResultPart(call_id, self.argument_error(), is_error=True)
    # so the model sees its mistake and can call again. Adapters replay such a call with `{}`.
    raw_arguments: str | None = None

    def argument_error(self) -> str | None:
        """A message for the model when `raw_arguments` is set (None when the call is valid)."""
        if self.raw_arguments is None:
            return None
        raw = self.raw_arguments
        try:
            json.loads(raw)
            why = "they are not a JSON object"
        except ValueError as exc:
            why = f"they are not valid JSON ({exc})"
        shown = raw if len(raw) <= 2000 else raw[:2000] + f"... [{len(raw) - 2000} more chars]"
        return (
            f"Error: the arguments of this call to '{self.name}' could not be used: {why}. "
            f"The tool was not run. Arguments received: {shown}\n"
            "Call the tool again with a single valid JSON object as its arguments."
        )


@dataclass
class ToolResultPart:
    call_id: str
    content: str  # what the model sees (possibly truncated; the full output is kept elsewhere)
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"


Part = TextPart | ToolCallPart | ToolResultPart


@dataclass
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    def tool_calls(self) -> list[ToolCallPart]:
        return [p for p in self.parts if isinstance(p, ToolCallPart)]

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "parts": [asdict(p) for p in self.parts]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Message:
        kinds = {"text": TextPart, "tool_call": ToolCallPart, "tool_result": ToolResultPart}
        parts: list[Part] = []
        for p in obj.get("parts", []):
            kind = kinds[p["type"]]
            parts.append(kind(**{k: v for k, v in p.items() if k != "type"}))
        return cls(obj["role"], parts)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass
class Usage:
    # input_tokens counts prompt tokens NOT read from or written to the cache (Anthropic's
    # meaning; the OpenAI adapter subtracts cached tokens), so the whole prompt is
    # input_tokens + cache_read_tokens + cache_write_tokens.
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


# -- stream events a provider yields for one model turn -------------------------------------


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolCallDelta:
    """A tool call being streamed; `index` orders parallel calls. Informational (UI progress)."""

    index: int
    id: str | None
    name: str | None
    arguments_fragment: str


@dataclass
class TurnEnd:
    """The turn is over: the full assistant message, why it stopped, and the token usage."""

    message: Message
    stop_reason: Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "error"]
    usage: Usage


StreamEvent = TextDelta | ToolCallDelta | TurnEnd


@dataclass
class ModelRequest:
    model: str
    system: str
    messages: list[Message]
    tools: list[ToolSpec]
    max_tokens: int = 4096
    temperature: float | None = None


class ProviderError(Exception):
    """A provider failure with what the user needs: a clear message, whether a retry may help."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
        partial: Message | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        # What the turn had streamed before it failed (text and complete tool calls), when
        # anything had: the caller has shown it, so a retry must replace it, not append to it.
        self.partial = partial


class Provider(Protocol):
    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Yield events for one model turn, ending with exactly one TurnEnd; raise ProviderError."""
        ...
