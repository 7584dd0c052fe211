"""The Anthropic Messages adapter, sans-I/O: request building, stream decoding, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_core.llm import anthropic
from agent_core.llm.sse import SSEParser
from agent_core.llm.types import (
    Message,
    ModelRequest,
    ProviderError,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
)


def ev(obj: dict[str, Any]) -> str:
    return f"event: {obj['type']}\r\ndata: {json.dumps(obj)}\r\n\r\n"


def decode(stream: str) -> tuple[list[Any], anthropic.StreamDecoder]:
    dec = anthropic.StreamDecoder()
    parser = SSEParser()
    out: list[Any] = []
    for e in [*parser.feed(stream.encode()), *parser.close()]:
        out += dec.feed(e)
    return out, dec


START = ev(
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5",
            "stop_reason": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 1000,
                "output_tokens": 1,
            },
        },
    }
)


def block_start(index: int, block: dict[str, Any]) -> str:
    return ev({"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, d: dict[str, Any]) -> str:
    return ev({"type": "content_block_delta", "index": index, "delta": d})


def stop(index: int) -> str:
    return ev({"type": "content_block_stop", "index": index})


def end(reason: str, output: int = 40) -> str:
    return ev(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": output},
        }
    ) + ev({"type": "message_stop"})


def test_endpoint_and_auth() -> None:
    assert anthropic.endpoint_url("https://api.anthropic.com") == (
        "https://api.anthropic.com/v1/messages"
    )
    assert anthropic.endpoint_url("https://proxy.example/anthropic/") == (
        "https://proxy.example/anthropic/v1/messages"
    )
    assert anthropic.endpoint_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1/messages"
    assert anthropic.auth_headers("k")["x-api-key"] == "k"
    assert anthropic.auth_headers(None) == {}


def test_build_request_merges_roles_orders_results_and_caches() -> None:
    messages = [
        Message("system", [TextPart("Project rules: be brief.")]),
        Message("user", [TextPart("fix it")]),
        Message("user", [TextPart("")]),  # empty text: dropped
        Message(
            "assistant",
            [
                TextPart("Reading."),
                ToolCallPart("t1", "read", {"path": "a.py"}),
                ToolCallPart("t2", "edit", {}, raw_arguments="{oops"),
            ],
        ),
        Message("user", [TextPart("(user note)")]),
        Message(
            "tool",
            [ToolResultPart("t1", "print(1)"), ToolResultPart("t2", "bad args", is_error=True)],
        ),
    ]
    tools = [ToolSpec("read", "Read a file", {"type": "object"}), ToolSpec("edit", "Edit", {})]
    req = ModelRequest("claude-x", "You are Kite.", messages, tools, max_tokens=512)
    api = anthropic.build_request(req)
    assert (api.method, api.path) == ("POST", "/v1/messages")
    assert api.headers["anthropic-version"] == "2023-06-01"
    assert not any(k.lower() == "x-api-key" for k in api.headers)
    b = api.body
    assert b["model"] == "claude-x" and b["max_tokens"] == 512 and b["stream"] is True
    assert b["system"] == [
        {
            "type": "text",
            "text": "You are Kite.\n\nProject rules: be brief.",
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert b["tools"][0] == {
        "name": "read",
        "description": "Read a file",
        "input_schema": {"type": "object"},
    }
    assert b["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert b["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "fix it"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a.py"}},
                {"type": "tool_use", "id": "t2", "name": "edit", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [  # the user note and the results merged, results first
                {"type": "tool_result", "tool_use_id": "t1", "content": "print(1)"},
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": "bad args",
                    "is_error": True,
                },
                {"type": "text", "text": "(user note)", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]
    plain = anthropic.build_request(req, prompt_cache=False).body
    assert "cache_control" not in json.dumps(plain)


def test_decode_text_and_parallel_tool_use_with_usage() -> None:
    stream = (
        START
        + ev({"type": "ping"})
        + block_start(0, {"type": "thinking", "thinking": ""})
        + delta(0, {"type": "thinking_delta", "thinking": "hmm"})
        + delta(0, {"type": "signature_delta", "signature": "sig"})
        + stop(0)
        + block_start(1, {"type": "text", "text": ""})
        + delta(1, {"type": "text_delta", "text": "I'll read "})
        + delta(1, {"type": "text_delta", "text": "both."})
        + stop(1)
        + block_start(2, {"type": "tool_use", "id": "toolu_a", "name": "read", "input": {}})
        + delta(2, {"type": "input_json_delta", "partial_json": ""})
        + delta(2, {"type": "input_json_delta", "partial_json": '{"path": "a'})
        + delta(2, {"type": "input_json_delta", "partial_json": '.py"}'})
        + stop(2)
        + block_start(3, {"type": "tool_use", "id": "toolu_b", "name": "ls", "input": {}})
        + stop(3)
        + end("tool_use")
    )
    events, dec = decode(stream)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["I'll read ", "both."]
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(c.index, c.id, c.name) for c in calls if c.id] == [
        (0, "toolu_a", "read"),
        (1, "toolu_b", "ls"),
    ]
    assert "".join(c.arguments_fragment for c in calls if c.index == 0) == '{"path": "a.py"}'
    assert dec.done
    turn = dec.finish()
    assert turn.stop_reason == "tool_use"
    assert turn.message.parts == [
        TextPart("I'll read both."),
        ToolCallPart("toolu_a", "read", {"path": "a.py"}),
        ToolCallPart("toolu_b", "ls", {}),
    ]
    u = turn.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (
        25,
        40,
        1000,
        300,
    )


def test_malformed_tool_input_is_kept_raw() -> None:
    stream = (
        START
        + block_start(0, {"type": "tool_use", "id": "t", "name": "edit", "input": {}})
        + delta(0, {"type": "input_json_delta", "partial_json": '{"path": "x", "text": "unterm'})
        + stop(0)
        + end("max_tokens")
    )
    _, dec = decode(stream)
    turn = dec.finish()
    (call,) = turn.message.tool_calls()
    assert call.arguments == {} and call.raw_arguments == '{"path": "x", "text": "unterm'
    assert turn.stop_reason == "max_tokens"
    assert "could not be used" in (call.argument_error() or "")


@pytest.mark.parametrize(
    ("wire", "stop_reason"),
    [
        ("end_turn", "end_turn"),
        ("stop_sequence", "stop_sequence"),
        ("pause_turn", "end_turn"),
        ("refusal", "error"),
        ("model_context_window_exceeded", "max_tokens"),
    ],
)
def test_stop_reasons(wire: str, stop_reason: str) -> None:
    text = block_start(0, {"type": "text", "text": "ok"}) + stop(0)
    _, dec = decode(START + text + end(wire))
    turn = dec.finish()
    assert turn.stop_reason == stop_reason and turn.message.text() == "ok"


def test_stop_reason_without_message_stop_is_complete_but_a_cut_is_not() -> None:
    text = block_start(0, {"type": "text", "text": ""}) + delta(
        0, {"type": "text_delta", "text": "Hello"}
    )
    message_delta = ev({"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    _, dec = decode(START + text + message_delta)
    assert dec.finish().message.text() == "Hello"

    _, dec = decode(START + text)
    with pytest.raises(ProviderError) as exc:
        dec.finish()
    assert exc.value.retryable
    assert exc.value.partial == Message("assistant", [TextPart("Hello")])


def test_in_stream_errors() -> None:
    overloaded = ev(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    with pytest.raises(ProviderError) as exc:
        decode(START + overloaded)
    assert exc.value.retryable and exc.value.status == 529 and "overloaded" in str(exc.value)
    invalid = ev({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    with pytest.raises(ProviderError) as exc:
        decode(START + invalid)
    assert not exc.value.retryable and exc.value.status == 400


def test_error_responses() -> None:
    def err(status: int, etype: str, msg: str, **headers: str) -> ProviderError:
        body = json.dumps({"type": "error", "error": {"type": etype, "message": msg}}).encode()
        return anthropic.parse_error(status, headers, body)

    e = err(401, "authentication_error", "invalid x-api-key", **{"request-id": "req_9"})
    assert not e.retryable and "rejected the API key" in str(e) and "req_9" in str(e)
    e = err(429, "rate_limit_error", "slow down", **{"retry-after": "3"})
    assert e.retryable and e.retry_after_s == 3
    e = err(529, "overloaded_error", "Overloaded")
    assert e.retryable and e.status == 529 and "overloaded" in str(e)
    e = err(500, "api_error", "Internal server error")
    assert e.retryable
    e = err(400, "invalid_request_error", "messages: text content blocks must be non-empty")
    assert not e.retryable and "non-empty" in str(e)
    e = err(413, "request_too_large", "too big")
    assert not e.retryable and "too large" in str(e)
