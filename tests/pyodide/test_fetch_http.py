"""The direct provider route inside Pyodide: `FetchHttpClient` (the JS `fetch`) against the
scripted model server running in CPython on loopback.

Runs only inside Pyodide and only when ``KITE_MODEL_URL`` is set: ``tests/test_llm_fetch.py``
starts a `ScriptedModelServer` whose every turn is chosen by the last user message (the scenario
name below), runs this file through ``tests/pyodide/run.mjs``, then checks on the host what the
server received (paths, credentials, that an aborted stream's connection was closed).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from agent_core.llm.http import HttpError, default_http_client
from agent_core.llm.providers import RetryPolicy, make_provider
from agent_core.llm.types import (
    Message,
    ModelRequest,
    ProviderError,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolSpec,
    TurnEnd,
)
from agent_core.runtime import IS_PYODIDE
from tests.runtime_support import run

MODEL_URL = os.environ.get("KITE_MODEL_URL", "")
DEAD_PORT = os.environ.get("KITE_DEAD_PORT", "")  # a loopback port nothing listens on
KEY = "sk-pyodide-test"

pytestmark = [
    pytest.mark.skipif(not IS_PYODIDE, reason="the fetch HTTP client: inside Pyodide"),
    pytest.mark.skipif(not MODEL_URL, reason="no KITE_MODEL_URL (tests/test_llm_fetch.py)"),
]

TOOLS = [
    ToolSpec("read", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}}),
    ToolSpec("list", "List a dir", {"type": "object", "properties": {"path": {"type": "string"}}}),
]
FORMATS = ["openai", "anthropic"]


def request(scenario: str) -> ModelRequest:
    return ModelRequest(
        model="",
        system="You are a test.",
        messages=[Message("user", [TextPart(scenario)])],
        tools=TOOLS,
        max_tokens=64,
    )


def provider(fmt: str) -> Any:
    return make_provider(
        f"{fmt}/model-x",
        route="direct",
        base_url=MODEL_URL,
        api_key=KEY,
        retry=RetryPolicy(max_attempts=1),
    )


async def collect(fmt: str, scenario: str) -> list[Any]:
    return [event async for event in provider(fmt).stream(request(scenario))]


def test_the_runtime_seam_picks_fetch() -> None:
    from agent_core.llm.http_pyodide import FetchHttpClient

    assert isinstance(default_http_client(), FetchHttpClient)
    assert isinstance(provider("openai").http, FetchHttpClient)


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_streams_in_pieces(fmt: str) -> None:
    events = run(collect(fmt, "text"))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["Hel", "lo ", "from ", "the server"]
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.stop_reason == "end_turn"
    assert end.message.text() == "Hello from the server"
    assert (end.usage.input_tokens, end.usage.output_tokens) == (21, 5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_split_chunks_and_parallel_tool_calls(fmt: str) -> None:
    """The server writes the wire bytes 3 at a time (chunk-size lines too)."""
    events = run(collect(fmt, "tools"))
    assert any(isinstance(e, ToolCallDelta) for e in events)
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.stop_reason == "tool_use"
    calls = end.message.tool_calls()
    assert [(c.name, c.arguments) for c in calls] == [
        ("read", {"path": "README.md"}),
        ("list", {"path": "src/ü"}),
    ]
    assert end.message.text() == "Let me look."


@pytest.mark.parametrize("fmt", FORMATS)
def test_http_error_status_is_a_clear_provider_error(fmt: str) -> None:
    with pytest.raises(ProviderError) as info:
        run(collect(fmt, "unauthorized"))
    assert info.value.status == 401
    assert "rejected the API key" in str(info.value) and "bad key here" in str(info.value)
    assert info.value.retryable is False


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_cut_midway_keeps_the_partial_text(fmt: str) -> None:
    seen: list[Any] = []

    async def go() -> None:
        async for event in provider(fmt).stream(request("cut")):
            seen.append(event)

    with pytest.raises(ProviderError) as info:
        run(go())
    assert info.value.retryable is True
    text = "".join(e.text for e in seen if isinstance(e, TextDelta))
    assert text.startswith("Hel") and "Hello world again".startswith(text), text
    assert not any(isinstance(e, TurnEnd) for e in seen)


async def server_disconnects() -> int:
    """How many hanging streams the server has seen their client leave (it tells us)."""
    events = await collect("openai", "disconnects")
    return int(events[-1].message.text())


async def wait_for_disconnects(more_than: int) -> int:
    """The abort must close the connection now, not when this process exits."""
    for _ in range(100):
        seen = await server_disconnects()
        if seen > more_than:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server still sees {more_than} closed streams after 5 s")


def test_closing_the_body_early_closes_the_connection() -> None:
    """The `hang` scenario never ends its stream: closing the body must close the socket."""

    async def go() -> str:
        before = await server_disconnects()
        client = default_http_client()
        body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hang"}]}'
        url = MODEL_URL.rstrip("/") + "/v1/chat/completions"
        response = await client.stream("POST", url, {"content-type": "application/json"}, body)
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = await response.body.__anext__()
        await response.body.aclose()
        await wait_for_disconnects(before)
        return first.decode()

    assert "Hel" in run(go())


def test_connection_refused_is_a_retryable_http_error() -> None:
    async def go() -> None:
        client = default_http_client()
        await client.stream("POST", f"http://127.0.0.1:{DEAD_PORT}/v1/x", {}, b"{}")

    with pytest.raises(HttpError) as info:
        run(go())
    assert info.value.retryable is True
    assert f"cannot connect to http://127.0.0.1:{DEAD_PORT}" in str(info.value)
    assert "bad port" not in str(info.value)  # a port fetch blocks would prove nothing


def test_cancelling_a_read_aborts_the_request() -> None:
    async def go() -> None:
        before = await server_disconnects()
        client = default_http_client()
        body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hang"}]}'
        url = MODEL_URL.rstrip("/") + "/v1/chat/completions"
        response = await client.stream("POST", url, {"content-type": "application/json"}, body)
        pieces = response.body
        got = b""
        while b"[DONE]" not in got:  # everything the server will send: the next read waits
            got += await pieces.__anext__()
        task = asyncio.ensure_future(pieces.__anext__())
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_disconnects(before)  # the cancelled read alone closed it
        await pieces.aclose()

    run(go())
