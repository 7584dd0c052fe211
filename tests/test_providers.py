"""Providers on the direct route against the scripted model server: full turns, retry policy,
faults, cancellation, TLS; and the asyncio HTTP client against hand-written responses."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent_core.llm.http import AsyncioHttpClient, HttpError, parse_retry_after
from agent_core.llm.providers import HttpProvider, RetryPolicy, make_provider
from agent_core.llm.types import (
    Message,
    ModelRequest,
    ProviderError,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolResultPart,
    ToolSpec,
    TurnEnd,
)
from agent_core.rpc.errors import RpcError
from tests.harness import self_signed_cert
from tests.model_server import ScriptedModelServer, ToolCall, Turn

KEY = "sk-direct-test-key"
FORMATS = ["openai", "anthropic"]
LS = ToolSpec("ls", "List a directory", {"type": "object", "properties": {"path": {}}})


def request(*messages: Message) -> ModelRequest:
    msgs = list(messages) or [Message("user", [TextPart("list the files")])]
    return ModelRequest(model="", system="You are Kite.", messages=msgs, tools=[LS])


class Sleeps:
    """A fake `sleep` that records the delays the retry policy asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def provider(fmt: str, srv: ScriptedModelServer, **kw: Any) -> HttpProvider:
    kw.setdefault("retry", RetryPolicy(jitter=0))
    kw.setdefault("sleep", Sleeps())
    return make_provider(f"{fmt}/model-x", route="direct", base_url=srv.base_url, api_key=KEY, **kw)


async def collect(p: HttpProvider, req: ModelRequest) -> list[StreamEvent]:
    return [e async for e in p.stream(req)]


def run(turns: list[Any], body: Callable[[ScriptedModelServer], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        async with ScriptedModelServer(turns, **kw) as srv:
            return await body(srv)

    return asyncio.run(main())


# -- full turns -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_direct_turn_with_parallel_calls_then_answer(fmt: str) -> None:
    turns = [
        Turn(
            text="Looking at both.",
            tool_calls=[ToolCall("ls", {"path": "src"}), ToolCall("ls", {"path": "tests"})],
            interleave=True,
            split=9,  # the wire bytes (chunk-size lines included) in 9-byte writes
            usage=(50, 20),
        ),
        Turn(text="There are 2 directories."),
    ]

    async def body(srv: ScriptedModelServer) -> None:
        p = provider(fmt, srv)
        events = await collect(p, request())
        end = events[-1]
        assert isinstance(end, TurnEnd) and sum(isinstance(e, TurnEnd) for e in events) == 1
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Looking at both."
        assert {e.index for e in events if isinstance(e, ToolCallDelta)} == {0, 1}
        assert end.stop_reason == "tool_use"
        calls = end.message.tool_calls()
        assert [c.arguments for c in calls] == [{"path": "src"}, {"path": "tests"}]
        assert (end.usage.input_tokens, end.usage.output_tokens) == (50, 20)

        results = Message(
            "tool", [ToolResultPart(c.id, f"{i} entries") for i, c in enumerate(calls)]
        )
        follow = request(request().messages[0], end.message, results)
        events = await collect(p, follow)
        assert events[-1].message.text() == "There are 2 directories."  # type: ignore[union-attr]
        assert events[-1].stop_reason == "end_turn"  # type: ignore[union-attr]

        first, second = srv.requests
        if fmt == "openai":
            assert first.path == "/v1/chat/completions"
            assert first.headers["authorization"] == f"Bearer {KEY}"
            assert first.body["tools"][0]["function"]["name"] == "ls"
            sent = [m for m in second.body["messages"] if m["role"] == "tool"]
            assert [m["tool_call_id"] for m in sent] == [c.id for c in calls]
        else:
            assert first.path == "/v1/messages"
            assert first.headers["x-api-key"] == KEY
            assert first.headers["anthropic-version"] == "2023-06-01"
            assert first.body["tools"][0]["name"] == "ls"
            last = second.body["messages"][-1]["content"]
            assert [b["tool_use_id"] for b in last] == [c.id for c in calls]
        assert first.body["model"] == "model-x" and first.body["stream"] is True

    run(turns, body)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("framing", ["chunked", "close", "length"])
def test_every_body_framing_and_crlf(fmt: str, framing: str) -> None:
    turns = [Turn(text="one two", framing=framing, crlf=True, split=20)]  # type: ignore[arg-type]

    async def body(srv: ScriptedModelServer) -> None:
        events = await collect(provider(fmt, srv), request())
        assert events[-1].message.text() == "one two"  # type: ignore[union-attr]

    run(turns, body)


@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_tool_call_goes_back_to_the_model_as_an_error(fmt: str) -> None:
    turns = [
        Turn(tool_calls=[ToolCall("edit", '{"path": "a.py", "text": "unterminated')]),
        Turn(text="Sorry, retrying."),
    ]

    async def body(srv: ScriptedModelServer) -> None:
        p = provider(fmt, srv)
        end = (await collect(p, request()))[-1]
        assert isinstance(end, TurnEnd)
        (call,) = end.message.tool_calls()
        assert call.raw_arguments == '{"path": "a.py", "text": "unterminated'
        error = call.argument_error()
        assert error is not None and "not valid JSON" in error and "unterminated" in error
        # What a loop does: answer the call with the error, ask again.
        reply = Message("tool", [ToolResultPart(call.id, error, is_error=True)])
        await collect(p, request(request().messages[0], end.message, reply))
        sent = json.dumps(srv.requests[1].body)
        assert "unterminated" in sent  # the model sees what it sent, in the error
        if fmt == "openai":
            tc = srv.requests[1].body["messages"][2]["tool_calls"][0]
            assert tc["function"]["arguments"] == "{}"
        else:
            tu = srv.requests[1].body["messages"][1]["content"][0]
            assert tu["input"] == {}
            assert srv.requests[1].body["messages"][2]["content"][0]["is_error"] is True

    run(turns, body)


# -- retry policy -------------------------------------------------------------------------


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(jitter=0)
    err = ProviderError("x", retryable=True)
    assert [policy.delay(a, err) for a in (1, 2, 3)] == [1.0, 2.0, None]
    assert policy.delay(1, ProviderError("x", retryable=False)) is None
    assert policy.delay(1, ProviderError("x", retryable=True, retry_after_s=7)) == 7
    assert policy.delay(1, ProviderError("x", retryable=True, retry_after_s=3600)) is None
    jittery = RetryPolicy(jitter=0.25)
    assert all(1.0 <= (jittery.delay(1, err) or 0) <= 1.25 for _ in range(50))


@pytest.mark.parametrize("fmt", FORMATS)
def test_429_honours_retry_after_then_succeeds(fmt: str) -> None:
    turns = [Turn.fail(429, "Rate limited", retry_after=2), Turn(text="ok")]
    seen: list[tuple[int | None, int, float]] = []

    async def body(srv: ScriptedModelServer) -> None:
        sleeps = Sleeps()
        p = provider(fmt, srv, sleep=sleeps, on_retry=lambda e, n, d: seen.append((e.status, n, d)))
        events = await collect(p, request())
        assert events[-1].message.text() == "ok"  # type: ignore[union-attr]
        assert sleeps.delays == [2.0]
        assert seen == [(429, 2, 2.0)]
        assert len(srv.requests) == 2

    run(turns, body)


@pytest.mark.parametrize("fmt", FORMATS)
def test_server_errors_back_off_then_give_up_after_three_attempts(fmt: str) -> None:
    turns = [Turn.fail(500), Turn.fail(503), Turn.fail(529, "Overloaded"), Turn(text="never")]

    async def body(srv: ScriptedModelServer) -> None:
        sleeps = Sleeps()
        with pytest.raises(ProviderError) as exc:
            await collect(provider(fmt, srv, sleep=sleeps), request())
        assert exc.value.status == 529 and exc.value.retryable
        assert "overloaded" in str(exc.value).lower()
        assert sleeps.delays == [1.0, 2.0]
        assert len(srv.requests) == 3 and srv.remaining == 1

    run(turns, body)


@pytest.mark.parametrize("fmt", FORMATS)
def test_401_is_not_retried_and_says_what_to_fix(fmt: str) -> None:
    async def body(srv: ScriptedModelServer) -> None:
        sleeps = Sleeps()
        with pytest.raises(ProviderError) as exc:
            await collect(provider(fmt, srv, sleep=sleeps), request())
        assert exc.value.status == 401 and not exc.value.retryable
        assert "rejected the API key" in str(exc.value)
        assert "given to this device" in str(exc.value)
        assert sleeps.delays == [] and len(srv.requests) == 1

    run([Turn.fail(401, "invalid x-api-key"), Turn(text="never")], body)


def test_a_retry_after_beyond_the_cap_is_reported_not_waited() -> None:
    async def body(srv: ScriptedModelServer) -> None:
        sleeps = Sleeps()
        with pytest.raises(ProviderError) as exc:
            await collect(provider("openai", srv, sleep=sleeps), request())
        assert exc.value.retry_after_s == 3600 and sleeps.delays == []

    run([Turn.fail(429, "daily limit", retry_after=3600)], body)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_stream_cut_before_any_output_is_retried(fmt: str, framing: str) -> None:
    # One event (OpenAI's role chunk; Anthropic's message_start) carries no output.
    turns = [Turn(text="lost", cut_after=1, framing=framing), Turn(text="fine")]  # type: ignore[arg-type]

    async def body(srv: ScriptedModelServer) -> None:
        sleeps = Sleeps()
        events = await collect(provider(fmt, srv, sleep=sleeps), request())
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "fine"
        assert len(sleeps.delays) == 1 and len(srv.requests) == 2

    run(turns, body)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_stream_cut_after_output_is_not_retried_and_keeps_the_partial(
    fmt: str, framing: str
) -> None:
    cut = 3 if fmt == "openai" else 5  # past the first text delta
    turns = [Turn(text="alpha beta gamma", cut_after=cut, framing=framing), Turn(text="x")]  # type: ignore[arg-type]

    async def body(srv: ScriptedModelServer) -> None:
        seen: list[StreamEvent] = []
        with pytest.raises(ProviderError) as exc:
            async for e in provider(fmt, srv).stream(request()):
                seen.append(e)
        shown = "".join(e.text for e in seen if isinstance(e, TextDelta))
        assert shown  # output reached the caller...
        assert exc.value.retryable  # ...so the turn may be retried by the caller, not here
        assert exc.value.partial is not None and exc.value.partial.text() == shown
        assert len(srv.requests) == 1 and srv.remaining == 1

    run(turns, body)


@pytest.mark.parametrize("fmt", FORMATS)
def test_in_stream_error_before_output_is_retried(fmt: str) -> None:
    turns = [Turn(text="x", cut_after=1, stream_error="Overloaded"), Turn(text="recovered")]

    async def body(srv: ScriptedModelServer) -> None:
        events = await collect(provider(fmt, srv), request())
        assert events[-1].message.text() == "recovered"  # type: ignore[union-attr]

    run(turns, body)


def test_unreachable_server_is_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens

    async def main() -> None:
        sleeps = Sleeps()
        p = make_provider(
            "openai/m",
            route="direct",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=KEY,
            retry=RetryPolicy(jitter=0),
            sleep=sleeps,
        )
        with pytest.raises(ProviderError) as exc:
            await collect(p, request())
        assert "cannot connect" in str(exc.value) and exc.value.retryable
        assert sleeps.delays == [1.0, 2.0]

    asyncio.run(main())


@pytest.mark.parametrize("fmt", FORMATS)
def test_closing_the_stream_closes_the_connection(fmt: str) -> None:
    async def body(srv: ScriptedModelServer) -> None:
        stream = provider(fmt, srv).stream(request())
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for e in stream:
                if isinstance(e, TextDelta):
                    break
        assert await asyncio.to_thread(srv.client_gone.wait, 10)

    run([Turn(text="first second third", hang=True)], body)


# -- make_provider --------------------------------------------------------------------------


def test_make_provider_checks_and_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("gpt-4o", "mistral/large", "openai/"):
        with pytest.raises(ValueError):
            make_provider(bad, route="direct")
    with pytest.raises(ValueError, match="host's key"):
        make_provider("openai/m", route="bridge", client=object(), api_key="k")
    with pytest.raises(ValueError, match="client"):
        make_provider("openai/m", route="bridge")
    with pytest.raises(ValueError):
        make_provider("openai/m", route="carrier-pigeon")  # type: ignore[arg-type]

    monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key-123")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    p = make_provider("anthropic/claude-x", route="direct")
    assert p.base_url == "https://api.anthropic.com" and p.model == "claude-x"
    assert "env-key-123" not in repr(p)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = make_provider("openai/meta-llama/llama-3-70b", route="direct")
    assert (p.base_url, p.model) == ("http://127.0.0.1:11434/v1", "meta-llama/llama-3-70b")


def test_keyless_server_and_model_names() -> None:
    async def body(srv: ScriptedModelServer) -> None:
        p = make_provider("openai/default-model", route="direct", base_url=srv.base_url + "/v1")
        await collect(p, request())
        req = request()
        req.model = "openai/other-model"  # the loop may pass the full spec
        await collect(p, req)
        assert "authorization" not in srv.requests[0].headers
        assert [r.body["model"] for r in srv.requests] == ["default-model", "other-model"]

    run([Turn(text="a"), Turn(text="b")], body)


# -- TLS --------------------------------------------------------------------------------------


def test_https_with_a_trusted_and_an_untrusted_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def body(srv: ScriptedModelServer) -> None:
        assert srv.base_url.startswith("https://")
        http = AsyncioHttpClient(ssl_context=trusting)
        events = await collect(provider("anthropic", srv, http=http), request())
        assert events[-1].message.text() == "secure"  # type: ignore[union-attr]
        sleeps = Sleeps()
        with pytest.raises(ProviderError) as exc:  # the system CAs do not know this cert
            await collect(provider("anthropic", srv, sleep=sleeps), request())
        assert "certificate" in str(exc.value).lower() and not exc.value.retryable
        assert sleeps.delays == []

    run([Turn(text="secure")], body, ssl_context=server_ctx)


# -- the HTTP client against hand-written responses -------------------------------------------


async def raw_server(response: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            for i in range(0, len(response), 7):
                writer.write(response[i : i + 7])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"


async def fetch(response: bytes) -> tuple[int, dict[str, str], bytes]:
    server, url = await raw_server(response)
    async with server:
        resp = await AsyncioHttpClient().stream("POST", url, {"X-Test": "1"}, b"{}")
        data = b""
        async for piece in resp.body:
            data += piece
        return resp.status, resp.headers, data


def test_http_client_parsing_details() -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\n"  # bare LF line endings are tolerated
        b"Content-Type: text/event-stream\r\n"
        b"X-Multi: a\r\nX-Multi: b\r\n"
        b"X-Folded: one\r\n  two\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n"
        b"1\r\n \r\n"
        b"5\r\nworld\r\n"
        b"0\r\nTrailer: x\r\n\r\n"
    )
    status, headers, data = asyncio.run(fetch(response))
    assert status == 200 and data == b"hello world"
    assert headers["x-multi"] == "a, b" and headers["x-folded"] == "one two"
    assert headers["content-type"] == "text/event-stream"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_http_client_truncated_bodies_raise(response: bytes) -> None:
    with pytest.raises(HttpError) as exc:
        asyncio.run(fetch(response))
    assert exc.value.retryable and "cut short" in str(exc.value)


@pytest.mark.parametrize("response", [b"", b"garbage\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n"])
def test_http_client_no_valid_response(response: bytes) -> None:
    with pytest.raises(HttpError) as exc:
        asyncio.run(fetch(response))
    assert "no valid HTTP response" in str(exc.value)


def test_http_client_refuses_header_injection() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await AsyncioHttpClient().stream("POST", "http://127.0.0.1:9/", {"X": "a\r\nB: c"}, b"")

    asyncio.run(main())


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "12"}) == 12
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    assert parse_retry_after({"retry-after": "Tue, 01 Jan 2030 00:00:30 GMT"}, now=now) == 30


def test_llm_package_imports_only_the_standard_library() -> None:
    """agent_core.llm also runs under Pyodide: nothing outside the stdlib at import time."""
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules);"
        "import agent_core.llm.providers, agent_core.llm.http, agent_core.llm.sse;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(new - set(sys.stdlib_module_names) - {'agent_core'}))"
    )
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- the bridge route's client side, with a fake KiteClient ----------------------------------


class FakeKiteClient:
    """Answers `model.stream` like a bridge would, or fails like one."""

    def __init__(self, error: RpcError | None = None, body: bytes = b"", status: int = 200):
        self.error, self.body, self.status = error, body, status
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, op: str, args: dict[str, Any], *, on_event: Any, on_chunk: Any) -> Any:
        self.calls.append((op, args))
        if self.error is not None:
            raise self.error
        headers = {"content-type": "text/event-stream"}
        on_event("response", {"status": self.status, "headers": headers})
        on_chunk(self.body, True)
        return {"status": self.status, "headers": headers, "bytes": len(self.body)}


def test_bridge_route_maps_bridge_refusals_and_failures() -> None:
    async def main() -> None:
        refused = FakeKiteClient(RpcError("EACCES", "no openai API key is configured on the host"))
        sleeps = Sleeps()
        p = make_provider("openai/m", client=refused, sleep=sleeps)
        with pytest.raises(ProviderError) as exc:
            await collect(p, request())
        assert not exc.value.retryable and "no openai API key" in str(exc.value)
        assert sleeps.delays == [] and len(refused.calls) == 1
        op, args = refused.calls[0]
        assert op == "model.stream" and args["provider"] == "openai"
        assert args["path"] == "/v1/chat/completions" and args["body"]["model"] == "m"

        old = FakeKiteClient(RpcError("EUNSUPPORTED", "unknown op 'model.stream'"))
        with pytest.raises(ProviderError, match="upgrade"):
            await collect(make_provider("openai/m", client=old), request())

        down = FakeKiteClient(RpcError("EIO", "cannot reach the openai API"))
        with pytest.raises(ProviderError) as exc:
            await collect(make_provider("openai/m", client=down, sleep=Sleeps()), request())
        assert exc.value.retryable and len(down.calls) == 3

        sse = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
        ok = FakeKiteClient(body=sse + b"data: [DONE]\n\n")
        events = await collect(make_provider("openai/m", client=ok), request())
        assert events[-1].message.text() == "hi"  # type: ignore[union-attr]

    asyncio.run(main())


def test_closing_an_unread_body_releases_the_connection() -> None:
    async def body(srv: ScriptedModelServer) -> None:
        http = AsyncioHttpClient()
        resp = await http.stream("POST", srv.base_url + "/v1/messages", {}, b'{"stream": true}')
        assert resp.status == 200
        await resp.body.aclose()  # type: ignore[attr-defined]  # never iterated
        assert await asyncio.to_thread(srv.client_gone.wait, 10)

    run([Turn(text="unread", hang=True)], body)
