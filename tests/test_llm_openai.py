"""The OpenAI Chat Completions adapter, sans-I/O: request building, stream decoding, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_core.llm import openai
from agent_core.llm.sse import SSEEvent, SSEParser
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
    TurnEnd,
)


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return "data: " + json.dumps(obj) + "\n\n"


def decode(stream: str) -> tuple[list[Any], openai.StreamDecoder]:
    dec = openai.StreamDecoder()
    parser = SSEParser()
    out: list[Any] = []
    for ev in [*parser.feed(stream.encode()), *parser.close()]:
        out += dec.feed(ev)
    return out, dec


LS = ToolSpec("ls", "List a directory", {"type": "object", "properties": {"path": {}}})


def test_endpoint_url_follows_the_sdk_convention() -> None:
    assert openai.endpoint_url("https://api.openai.com/v1") == (
        "https://api.openai.com/v1/chat/completions"
    )
    assert openai.endpoint_url("https://openrouter.ai/api/v1/") == (
        "https://openrouter.ai/api/v1/chat/completions"
    )
    assert openai.endpoint_url("http://localhost:8080") == (
        "http://localhost:8080/v1/chat/completions"
    )
    assert openai.endpoint_url("https://g.example/v1beta/openai/") == (
        "https://g.example/v1beta/openai/chat/completions"
    )


def test_build_request_body_and_headers_without_key() -> None:
    req = ModelRequest(
        model="gpt-4o",
        system="You are Kite.",
        messages=[Message("user", [TextPart("list files")])],
        tools=[LS],
        max_tokens=100,
        temperature=0.2,
    )
    api = openai.build_request(req)
    assert (api.method, api.path) == ("POST", "/v1/chat/completions")
    assert not any(k.lower() == "authorization" for k in api.headers)
    b = api.body
    assert b["model"] == "gpt-4o" and b["stream"] is True
    assert b["stream_options"] == {"include_usage": True}
    assert b["max_tokens"] == 100 and b["temperature"] == 0.2
    assert b["messages"] == [
        {"role": "system", "content": "You are Kite."},
        {"role": "user", "content": "list files"},
    ]
    assert b["tools"] == [
        {
            "type": "function",
            "function": {"name": "ls", "description": LS.description, "parameters": LS.parameters},
        }
    ]
    assert json.loads(api.encode_body()) == b
    assert openai.auth_headers("sk-x") == {"Authorization": "Bearer sk-x"}
    assert openai.auth_headers(None) == {}


def test_no_tools_key_and_reasoning_models_use_max_completion_tokens() -> None:
    req = ModelRequest(model="o3-mini", system="", messages=[], tools=[])
    body = openai.build_request(req).body
    assert "tools" not in body and "temperature" not in body
    assert body["max_completion_tokens"] == 4096 and "max_tokens" not in body
    assert openai.max_tokens_field("gpt-5") == "max_completion_tokens"
    assert openai.max_tokens_field("llama3.1:8b") == "max_tokens"


def test_history_encoding_tool_calls_results_and_malformed_calls() -> None:
    messages = [
        Message("user", [TextPart("go")]),
        Message(
            "assistant",
            [
                TextPart("Looking."),
                ToolCallPart("c1", "ls", {"path": "."}),
                ToolCallPart("c2", "cat", {}, raw_arguments='{"path": '),
            ],
        ),
        Message(
            "tool",
            [
                ToolResultPart("c1", "a.txt"),
                ToolResultPart("c2", "bad arguments", is_error=True),
            ],
        ),
        Message("user", [ToolResultPart("c3", "late result"), TextPart("and then?")]),
        Message("assistant", []),  # empty turns are skipped
    ]
    out = openai.encode_messages(ModelRequest("m", "", messages, []))
    assert out == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "ls", "arguments": '{"path": "."}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "cat", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: bad arguments"},
        {"role": "tool", "tool_call_id": "c3", "content": "late result"},
        {"role": "user", "content": "and then?"},
    ]


def test_decode_text_parallel_tool_calls_and_usage() -> None:
    stream = (
        ": OPENROUTER PROCESSING\n\n"
        + chunk({"role": "assistant", "content": ""})
        + chunk({"content": "Let me "})
        + chunk({"content": "look."})
        + chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "ls", "arguments": ""},
                    }
                ]
            }
        )
        + chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "cat", "arguments": '{"pa'},
                    }
                ]
            }
        )
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"path": "src"}'}}]})
        + chunk({"tool_calls": [{"index": 1, "function": {"arguments": 'th": "x.py"}'}}]})
        + chunk({}, "tool_calls")
        + "data: "
        + json.dumps(
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 120,
                    "completion_tokens": 30,
                    "prompt_tokens_details": {"cached_tokens": 100},
                },
            }
        )
        + "\n\ndata: [DONE]\n\n"
    )
    events, dec = decode(stream)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Let me ", "look."]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(d.index, d.id, d.name) for d in deltas[:2]] == [
        (0, "call_a", "ls"),
        (1, "call_b", "cat"),
    ]
    assert dec.done
    end = dec.finish()
    assert end.stop_reason == "tool_use"
    assert end.message.text() == "Let me look."
    assert end.message.tool_calls() == [
        ToolCallPart("call_a", "ls", {"path": "src"}),
        ToolCallPart("call_b", "cat", {"path": "x.py"}),
    ]
    assert (end.usage.input_tokens, end.usage.cache_read_tokens, end.usage.output_tokens) == (
        20,
        100,
        30,
    )


def test_malformed_and_non_object_arguments_are_kept_raw() -> None:
    stream = (
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "a", "function": {"name": "edit", "arguments": '{"x": 1'}},
                    {"index": 1, "id": "b", "function": {"name": "ls", "arguments": "[1, 2]"}},
                    {"index": 2, "id": "c", "function": {"name": "pwd", "arguments": ""}},
                ]
            },
            "tool_calls",
        )
        + "data: [DONE]\n\n"
    )
    _, dec = decode(stream)
    a, b, c = dec.finish().message.tool_calls()
    assert (a.arguments, a.raw_arguments) == ({}, '{"x": 1')
    assert "not valid JSON" in (a.argument_error() or "")
    assert (b.arguments, b.raw_arguments) == ({}, "[1, 2]")
    assert "not a JSON object" in (b.argument_error() or "")
    assert (c.arguments, c.raw_arguments, c.argument_error()) == ({}, None, None)


def test_servers_quirks_same_index_new_id_no_index_object_arguments() -> None:
    stream = (
        # Gemini-style: every call at index 0, told apart by id
        chunk(
            {"tool_calls": [{"index": 0, "id": "g1", "function": {"name": "a", "arguments": "{}"}}]}
        )
        + chunk(
            {"tool_calls": [{"index": 0, "id": "g2", "function": {"name": "b", "arguments": "{}"}}]}
        )
        # no index at all, arguments as an object (some local servers)
        + chunk({"tool_calls": [{"id": "n1", "function": {"name": "c", "arguments": {"k": 1}}}]})
        + chunk({}, "stop")  # Ollama says "stop" even with tool calls
    )
    _, dec = decode(stream)  # no [DONE]: the finish_reason is enough
    end = dec.finish()
    assert [(c.id, c.name, c.arguments) for c in end.message.tool_calls()] == [
        ("g1", "a", {}),
        ("g2", "b", {}),
        ("n1", "c", {"k": 1}),
    ]
    assert end.stop_reason == "tool_use"


def test_missing_ids_are_generated() -> None:
    _, dec = decode(chunk({"tool_calls": [{"index": 0, "function": {"name": "x"}}]}, "tool_calls"))
    (call,) = dec.finish().message.tool_calls()
    assert call.id.startswith("call_kite_")


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "error"), (None, None)],
)
def test_stop_reasons_and_cut_streams(finish: str | None, stop: str | None) -> None:
    stream = chunk({"content": "partial answer"}) + (chunk({}, finish) if finish else "")
    _, dec = decode(stream)
    if stop is None:
        with pytest.raises(ProviderError) as exc:
            dec.finish()
        assert exc.value.retryable and "ended before the turn was complete" in str(exc.value)
        assert exc.value.partial is not None and exc.value.partial.text() == "partial answer"
    else:
        end = dec.finish()
        assert isinstance(end, TurnEnd) and end.stop_reason == stop
        assert end.usage.input_tokens == 0  # no usage reported: zeros


def test_in_stream_error_and_malformed_data() -> None:
    dec = openai.StreamDecoder()
    dec.feed(SSEEvent(json.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]})))
    with pytest.raises(ProviderError) as exc:
        dec.feed(SSEEvent(json.dumps({"error": {"message": "upstream overloaded", "code": 502}})))
    assert exc.value.retryable and exc.value.status == 502
    assert "upstream overloaded" in str(exc.value)
    assert exc.value.partial is not None and exc.value.partial.text() == "hi"
    with pytest.raises(ProviderError) as exc:
        dec.feed(SSEEvent(json.dumps({"error": {"message": "bad request", "code": 400}})))
    assert not exc.value.retryable
    with pytest.raises(ProviderError) as exc:
        openai.StreamDecoder().feed(SSEEvent("{not json"))
    assert exc.value.retryable and "malformed" in str(exc.value)


def _err(status: int, body: Any, **headers: str) -> ProviderError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return openai.parse_error(status, headers, raw)


def test_error_responses() -> None:
    e = _err(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
    assert e.status == 401 and not e.retryable
    assert "rejected the API key" in str(e) and "Incorrect API key provided" in str(e)

    e = _err(
        429,
        {"error": {"message": "Rate limit reached", "type": "requests"}},
        **{"retry-after": "7"},
    )
    assert e.retryable and e.retry_after_s == 7
    e = _err(429, {"error": {"message": "Slow down"}}, **{"retry-after-ms": "1500"})
    assert e.retry_after_s == 1.5
    e = _err(
        429,
        {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota"}},
    )
    assert not e.retryable and "quota" in str(e)

    for status in (500, 502, 503, 504):
        assert _err(status, b"<html>Bad gateway</html>").retryable
    e = _err(503, {"error": "model is loading"})  # Ollama/llama.cpp shape
    assert e.retryable and "model is loading" in str(e)
    e = _err(400, {"object": "error", "message": "context too long", "type": "BadRequestError"})
    assert not e.retryable and "context too long" in str(e)  # vLLM shape
    e = _err(404, {"error": {"message": "model not found"}}, **{"x-request-id": "req_1"})
    assert not e.retryable and "req_1" in str(e) and "model name" in str(e)
    e = _err(500, {"error": {"message": "no"}}, **{"x-should-retry": "false"})
    assert not e.retryable
    e = _err(
        429, {"error": {"message": "later"}}, **{"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )
    assert e.retry_after_s == 0.0  # a date in the past: no wait
