"""Adapter for the Anthropic Messages API: request building, stream decoding and error parsing,
all sans-I/O.

Wire decisions:
- System text (the request's `system` and any neutral "system" messages) goes to `system`.
  "tool" messages become user turns of `tool_result` blocks; consecutive turns of one role are
  merged (the API wants alternation) with `tool_result` blocks first in a user turn; empty text
  blocks are dropped (the API refuses them).
- Prompt caching: `cache_control` breakpoints on the system prompt, the last tool and the last
  block of the conversation (3 of the 4 allowed), so each turn re-reads the previous prefix
  from the cache. Turn off with `prompt_cache=False` for servers that reject the field.
- A call whose arguments were not valid JSON (`ToolCallPart.raw_arguments`) is replayed with
  `input: {}` (the API only takes objects); the tool result shows the model what it sent.
- Tool calls are numbered (`ToolCallDelta.index`) in order of appearance, not by content-block
  index; their `input_json_delta` fragments are joined and parsed once at the block's end.
  Thinking and server-tool blocks are ignored.
- Stop reasons: end_turn/tool_use/max_tokens/stop_sequence as is; `pause_turn` → end_turn;
  `refusal` → error; `model_context_window_exceeded` → max_tokens.
- The turn is complete at `message_stop`, or at the end of the body once `message_delta`
  carried a stop reason. An `error` event (e.g. `overloaded_error`) raises a ProviderError.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from agent_core.llm.http import ApiRequest, error_detail, status_error
from agent_core.llm.openai import parse_arguments
from agent_core.llm.sse import SSEEvent
from agent_core.llm.types import (
    Message,
    ModelRequest,
    Part,
    ProviderError,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    TurnEnd,
    Usage,
)

NAME = "anthropic"
LABEL = "Anthropic"
PATH = "/v1/messages"
DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_CACHE = {"type": "ephemeral"}
_STOP = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "pause_turn": "end_turn",
    "refusal": "error",
    "model_context_window_exceeded": "max_tokens",
}
# In-stream error types → (status, retryable)
_STREAM_ERRORS = {
    "overloaded_error": (529, True),
    "api_error": (500, True),
    "rate_limit_error": (429, True),
    "timeout_error": (504, True),
    "authentication_error": (401, False),
    "permission_error": (403, False),
    "invalid_request_error": (400, False),
    "not_found_error": (404, False),
    "request_too_large": (413, False),
}


def endpoint_url(base_url: str, path: str = PATH) -> str:
    """Join like the Anthropic SDKs (the base URL has no version); a trailing `/v1` is tolerated."""
    base = base_url.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        return base + path[3:]
    return base + path


def auth_headers(api_key: str | None) -> dict[str, str]:
    """Credential headers for the direct route (the bridge adds its own on the relay route).

    `anthropic-dangerous-direct-browser-access` lets a browser page call the API (CORS); it is
    harmless elsewhere.
    """
    if not api_key:
        return {}
    return {"x-api-key": api_key, "anthropic-dangerous-direct-browser-access": "true"}


def _block(p: Part) -> dict[str, Any] | None:
    if isinstance(p, TextPart):
        return {"type": "text", "text": p.text} if p.text else None
    if isinstance(p, ToolCallPart):
        args = {} if p.raw_arguments is not None else p.arguments
        return {"type": "tool_use", "id": p.id, "name": p.name, "input": args}
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": p.call_id}
    if p.content:
        block["content"] = p.content
    if p.is_error:
        block["is_error"] = True
    return block


def encode_messages(request: ModelRequest) -> tuple[str, list[dict[str, Any]]]:
    """(system text, messages) in the API's shape."""
    system = [request.system] if request.system else []
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "system":
            if m.text():
                system.append(m.text())
            continue
        role = "assistant" if m.role == "assistant" else "user"
        blocks = [b for b in map(_block, m.parts) if b is not None]
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for msg in out:
        if msg["role"] == "user":
            blocks = msg["content"]
            msg["content"] = [b for b in blocks if b["type"] == "tool_result"] + [
                b for b in blocks if b["type"] != "tool_result"
            ]
    return "\n\n".join(system), out


def build_request(request: ModelRequest, *, prompt_cache: bool = True) -> ApiRequest:
    """The HTTP request for one streamed turn, without the credential header."""
    system, messages = encode_messages(request)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
        "stream": True,
    }
    if system:
        block: dict[str, Any] = {"type": "text", "text": system}
        if prompt_cache:
            block["cache_control"] = _CACHE
        body["system"] = [block]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        tools: list[dict[str, Any]] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if prompt_cache:
            tools[-1]["cache_control"] = _CACHE
        body["tools"] = tools
    if prompt_cache and messages:
        last = messages[-1]["content"][-1]
        messages[-1]["content"][-1] = {**last, "cache_control": _CACHE}
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "anthropic-version": API_VERSION,
    }
    return ApiRequest("POST", PATH, headers, body)


def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """An HTTP error response → ProviderError (401 not retryable, 429/5xx/529 retryable...)."""
    detail, code = error_detail(body)
    return status_error(LABEL, status, headers, detail, code=code)


class _Block:
    __slots__ = ("args", "id", "kind", "name", "ordinal", "text")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "text" | "tool" | "other"
        self.text: list[str] = []
        self.args: list[str] = []
        self.id = ""
        self.name = ""
        self.ordinal = -1


class StreamDecoder:
    """Fed SSE events of one Messages stream; returns deltas; `finish()` gives TurnEnd."""

    def __init__(self) -> None:
        self._blocks: dict[int, _Block] = {}
        self._order: list[int] = []
        self._calls = 0
        self._stop: str | None = None
        self._usage = Usage()
        self._started = False
        self.done = False  # message_stop seen: stop reading

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        try:
            obj = json.loads(event.data)
        except ValueError:
            raise ProviderError(
                f"{LABEL} API: malformed data in the response stream: {event.data[:200]!r}",
                retryable=True,
                partial=self.partial(),
            ) from None
        if not isinstance(obj, dict):
            return []
        kind = obj.get("type") or event.event
        if kind == "content_block_delta":
            return self._delta(obj)
        if kind == "content_block_start":
            return self._start(obj)
        if kind == "message_start":
            self._started = True
            msg = obj.get("message")
            if isinstance(msg, dict) and isinstance(msg.get("usage"), dict):
                self._take_usage(msg["usage"])
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop = str(delta["stop_reason"])
            if isinstance(obj.get("usage"), dict):
                self._take_usage(obj["usage"])
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise self._stream_error(obj.get("error"))
        return []  # ping, content_block_stop, unknown events

    def _start(self, obj: dict[str, Any]) -> list[StreamEvent]:
        index = obj.get("index")
        cb = obj.get("content_block")
        if not isinstance(index, int) or not isinstance(cb, dict):
            return []
        btype = cb.get("type")
        if btype == "text":
            block = _Block("text")
            self._add(index, block)
            text = cb.get("text")
            if isinstance(text, str) and text:
                block.text.append(text)
                return [TextDelta(text)]
            return []
        if btype == "tool_use":
            block = _Block("tool")
            block.id = str(cb.get("id") or "")
            block.name = str(cb.get("name") or "")
            block.ordinal = self._calls
            self._calls += 1
            self._add(index, block)
            initial = cb.get("input")
            if isinstance(initial, dict) and initial:
                block.args.append(json.dumps(initial, ensure_ascii=False))
            return [ToolCallDelta(block.ordinal, block.id or None, block.name or None, "")]
        self._add(index, _Block("other"))
        return []

    def _add(self, index: int, block: _Block) -> None:
        if index not in self._blocks:
            self._order.append(index)
        self._blocks[index] = block

    def _delta(self, obj: dict[str, Any]) -> list[StreamEvent]:
        block = self._blocks.get(obj.get("index"))  # type: ignore[arg-type]
        delta = obj.get("delta")
        if block is None or not isinstance(delta, dict):
            return []
        dtype = delta.get("type")
        if dtype == "text_delta" and block.kind == "text":
            text = delta.get("text")
            if isinstance(text, str) and text:
                block.text.append(text)
                return [TextDelta(text)]
        elif dtype == "input_json_delta" and block.kind == "tool":
            frag = delta.get("partial_json")
            if isinstance(frag, str) and frag:
                block.args.append(frag)
                return [ToolCallDelta(block.ordinal, None, None, frag)]
        return []

    def _take_usage(self, u: dict[str, Any]) -> None:
        us = self._usage
        for wire, attr in (
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("cache_read_input_tokens", "cache_read_tokens"),
            ("cache_creation_input_tokens", "cache_write_tokens"),
        ):
            v = u.get(wire)
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(us, attr, v)

    def _stream_error(self, err: Any) -> ProviderError:
        etype = str(err.get("type", "")) if isinstance(err, dict) else ""
        message = str(err.get("message", "")) if isinstance(err, dict) else str(err)
        status, retryable = _STREAM_ERRORS.get(etype, (None, True))
        what = "is overloaded" if etype == "overloaded_error" else "error"
        return ProviderError(
            f"{LABEL} API {what} in the response stream: {message or etype}",
            status=status,
            retryable=retryable,
            partial=self.partial(),
        )

    def _parts(self, *, complete_calls: bool) -> list[Part]:
        parts: list[Part] = []
        for index in self._order:
            block = self._blocks[index]
            if block.kind == "text":
                text = "".join(block.text)
                if not text:
                    continue
                if parts and isinstance(parts[-1], TextPart):
                    parts[-1] = TextPart(parts[-1].text + text)
                else:
                    parts.append(TextPart(text))
            elif block.kind == "tool" and complete_calls:
                args, raw = parse_arguments("".join(block.args))
                if not block.id:  # compatible servers may omit it; results must name one
                    block.id = f"toolu_kite_{secrets.token_hex(6)}"
                parts.append(ToolCallPart(block.id, block.name, args, raw_arguments=raw))
        return parts

    def partial(self) -> Message | None:
        """What was streamed so far (text only: a half-streamed call is not usable)."""
        parts = self._parts(complete_calls=False)
        return Message("assistant", parts) if parts else None

    def finish(self) -> TurnEnd:
        """Call at the end of the body: the whole turn, or a retryable error if it was cut."""
        if not self.done and self._stop is None:
            raise ProviderError(
                f"{LABEL} API: the response stream ended before the turn was complete "
                "(connection cut)",
                retryable=True,
                partial=self.partial(),
            )
        parts = self._parts(complete_calls=True)
        has_calls = any(isinstance(p, ToolCallPart) for p in parts)
        stop: Any = _STOP.get(self._stop or "", "tool_use" if has_calls else "end_turn")
        return TurnEnd(Message("assistant", parts), stop, self._usage)
