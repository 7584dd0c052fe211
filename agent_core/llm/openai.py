"""Adapter for OpenAI-compatible Chat Completions (OpenAI, OpenRouter, vLLM, llama.cpp server,
Ollama, LM Studio): request building, stream decoding and error parsing, all sans-I/O.

Wire decisions:
- The request streams (`"stream": true`) and asks for usage (`stream_options.include_usage`);
  servers that ignore it just report no usage (zeros).
- Tool results go back as one `{"role": "tool"}` message per result, placed before any text of
  the same neutral message (the API wants them right after the assistant's `tool_calls`).
  `is_error` has no field here, so the content is prefixed with "Error: ".
- A call whose arguments were not valid JSON (`ToolCallPart.raw_arguments`) is replayed with
  `"{}"`: strict servers (llama.cpp, vLLM templates) reject unparsable arguments in history,
  and the tool result already shows the model what it sent.
- Parallel calls are accumulated by `index`; a delta with a new `id` at an index already used by
  another call starts a new call (some servers send every call at index 0).
- Argument JSON is parsed once, at the end of the turn. Empty arguments mean `{}`.
- Stop reasons: `stop` → end_turn, `tool_calls`/`function_call` (or any tool call present) →
  tool_use, `length` → max_tokens, `content_filter` → error.
- Usage: `input_tokens` = prompt tokens minus cached ones; cached → `cache_read_tokens`.
- The turn is complete at `data: [DONE]`, or at the end of the body once a `finish_reason` was
  seen (some servers omit [DONE]). Anything else is a cut stream: a retryable ProviderError.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from agent_core.llm.http import ApiRequest, error_detail, status_error
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
    ToolResultPart,
    TurnEnd,
    Usage,
)

NAME = "openai"
LABEL = "OpenAI"
PATH = "/v1/chat/completions"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# OpenAI's reasoning models refuse `max_tokens` and want `max_completion_tokens`; other servers
# may not know the newer name, so it is used for these model names only.
_NEW_MAX_FIELD = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


def endpoint_url(base_url: str, path: str = PATH) -> str:
    """Join a base URL and an API path the way the OpenAI SDKs do.

    A base URL with a path (`https://api.openai.com/v1`, `https://openrouter.ai/api/v1`,
    `http://host/v1beta/openai`) already names the API version: the path's `/v1` is dropped.
    A bare origin (`http://localhost:8080`) gets the full `/v1/...` path.
    """
    base = base_url.rstrip("/")
    scheme_sep = base.find("://")
    has_path = "/" in base[scheme_sep + 3 :] if scheme_sep >= 0 else False
    if has_path and path.startswith("/v1/"):
        return base + path[3:]
    return base + path


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The credential header (added by whoever holds the key: the bridge host, or the device)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def max_tokens_field(model: str) -> str:
    return "max_completion_tokens" if _NEW_MAX_FIELD.match(model) else "max_tokens"


def _arguments_text(call: ToolCallPart) -> str:
    if call.raw_arguments is not None:
        return "{}"
    return json.dumps(call.arguments, ensure_ascii=False)


def encode_messages(request: ModelRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for m in request.messages:
        for p in m.parts:
            if isinstance(p, ToolResultPart):
                content = p.content
                if p.is_error and not content.lower().startswith("error"):
                    content = "Error: " + content
                out.append({"role": "tool", "tool_call_id": p.call_id, "content": content})
        text = m.text()
        if m.role == "assistant":
            calls = m.tool_calls()
            if not text and not calls:
                continue
            msg: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                msg["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": _arguments_text(c)},
                    }
                    for c in calls
                ]
            out.append(msg)
        elif m.role in ("user", "system"):
            has_results = any(isinstance(p, ToolResultPart) for p in m.parts)
            if text or not has_results:
                out.append({"role": m.role, "content": text})
        elif text:  # a "tool" message with loose text: show it as the user's words
            out.append({"role": "user", "content": text})
    return out


def build_request(request: ModelRequest, *, max_field: str | None = None) -> ApiRequest:
    """The HTTP request for one streamed turn, without the credential header."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": encode_messages(request),
        "stream": True,
        "stream_options": {"include_usage": True},
        max_field or max_tokens_field(request.model): request.max_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    return ApiRequest("POST", PATH, headers, body)


def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """An HTTP error response → ProviderError (401 not retryable, 429/5xx retryable...)."""
    detail, code = error_detail(body)
    return status_error(LABEL, status, headers, detail, code=code)


def parse_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """(arguments, None) for a JSON object or empty text; ({}, raw) for anything else."""
    if not raw.strip():
        return {}, None
    try:
        value = json.loads(raw)
    except ValueError:
        return {}, raw
    if not isinstance(value, dict):
        return {}, raw
    return value, None


class _Call:
    __slots__ = ("args", "id", "name", "ordinal")

    def __init__(self, ordinal: int, call_id: str | None, name: str | None) -> None:
        self.ordinal = ordinal
        self.id = call_id or ""
        self.name = name or ""
        self.args: list[str] = []

    def part(self) -> ToolCallPart:
        args, raw = parse_arguments("".join(self.args))
        call_id = self.id or f"call_kite_{secrets.token_hex(6)}"
        return ToolCallPart(call_id, self.name, args, raw_arguments=raw)


class StreamDecoder:
    """Fed SSE events of one Chat Completions stream; returns deltas; `finish()` gives TurnEnd."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: list[_Call] = []
        self._by_index: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self.done = False  # [DONE] seen: stop reading

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        data = event.data.strip()
        if not data:
            return []
        if data == "[DONE]":
            self.done = True
            return []
        try:
            obj = json.loads(data)
        except ValueError:
            raise ProviderError(
                f"{LABEL} API: malformed data in the response stream: {data[:200]!r}",
                retryable=True,
                partial=self.partial(),
            ) from None
        if not isinstance(obj, dict):
            return []
        if obj.get("error"):
            raise self._stream_error(obj["error"])
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        out: list[StreamEvent] = []
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text.append(content)
                out.append(TextDelta(content))
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    out.append(self._tool_delta(tc))
            legacy = delta.get("function_call")
            if isinstance(legacy, dict):
                out.append(self._tool_delta({"index": 0, "function": legacy}))
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return out

    def _tool_delta(self, tc: dict[str, Any]) -> ToolCallDelta:
        index = tc.get("index")
        call_id = tc.get("id") if isinstance(tc.get("id"), str) and tc.get("id") else None
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        name = fn.get("name") if isinstance(fn.get("name"), str) else None
        frag = fn.get("arguments", "")
        if not isinstance(frag, str):  # some servers send the object itself
            frag = json.dumps(frag, ensure_ascii=False) if frag is not None else ""
        if isinstance(index, int) and not isinstance(index, bool):
            call = self._by_index.get(index)
            if call is None or (call_id and call.id and call_id != call.id):
                call = None
        else:
            index = -1
            call = self._calls[-1] if self._calls else None
            if call is not None and call_id and call.id and call_id != call.id:
                call = None
        if call is None:
            call = _Call(len(self._calls), call_id, name)
            self._calls.append(call)
            self._by_index[index] = call
        else:
            if call_id and not call.id:
                call.id = call_id
            if name and not call.name:
                call.name = name
        if frag:
            call.args.append(frag)
        return ToolCallDelta(call.ordinal, call_id, name, frag)

    def _stream_error(self, err: Any) -> ProviderError:
        if isinstance(err, dict):
            message = str(err.get("message") or err)
            code = err.get("code")
        else:
            message, code = str(err), None
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        retryable = status is None or status in (408, 409, 429) or status >= 500
        return ProviderError(
            f"{LABEL} API error in the response stream: {message}",
            status=status,
            retryable=retryable,
            partial=self.partial(),
        )

    def partial(self) -> Message | None:
        """What was streamed so far (text only: a half-streamed call is not usable)."""
        text = "".join(self._text)
        return Message("assistant", [TextPart(text)]) if text else None

    def finish(self) -> TurnEnd:
        """Call at the end of the body: the whole turn, or a retryable error if it was cut."""
        if not self.done and self._finish is None:
            raise ProviderError(
                f"{LABEL} API: the response stream ended before the turn was complete "
                "(connection cut)",
                retryable=True,
                partial=self.partial(),
            )
        parts: list[Part] = []
        text = "".join(self._text)
        if text:
            parts.append(TextPart(text))
        calls = [c.part() for c in self._calls]
        parts.extend(calls)
        return TurnEnd(Message("assistant", parts), self._stop_reason(bool(calls)), self._usage_())

    def _stop_reason(self, has_calls: bool) -> Any:
        fr = self._finish
        if fr == "length":
            return "max_tokens"
        if fr == "content_filter":
            return "error"
        if has_calls:
            return "tool_use"
        return "end_turn"

    def _usage_(self) -> Usage:
        u = self._usage or {}
        prompt = _int(u.get("prompt_tokens"))
        details = u.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return Usage(
            input_tokens=max(0, prompt - cached),
            output_tokens=_int(u.get("completion_tokens")),
            cache_read_tokens=cached,
        )


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
