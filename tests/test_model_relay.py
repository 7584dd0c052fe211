"""The model relay: a real bridge subprocess whose environment points at the scripted model
server, driven by agent_core's own client. Every frame the device decrypts is recorded, to show
the host's API keys never reach it. Plus in-process tests of the op's pieces (configuration,
redaction, refusals)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.channel.crypto import KeyPair
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.client import KiteClient
from agent_core.llm.http import HttpError, HttpResponse
from agent_core.llm.providers import HttpProvider, RetryPolicy, make_provider
from agent_core.llm.types import (
    Message,
    ModelRequest,
    ProviderError,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolResultPart,
    ToolSpec,
    TurnEnd,
)
from agent_core.pairing import parse_link, websocket_url
from agent_core.rpc.errors import RpcError
from agent_core.transport.ws_cpython import open_websocket
from bridge.ops import model as model_ops
from tests.harness import BridgeProcess
from tests.model_server import ScriptedModelServer, ToolCall, Turn

OPENAI_KEY = "sk-host-openai-7f3a9c0e1d2b4a5f"
ANTHROPIC_KEY = "sk-ant-host-anthropic-0b1c2d3e4f5a6b7c"
DEVICE_KEY = "sk-device-direct-key"
FORMATS = ["openai", "anthropic"]
LS = ToolSpec("ls", "List a directory", {"type": "object"})


@dataclass
class Setup:
    srv: ScriptedModelServer
    bridge: BridgeProcess
    static: KeyPair
    host_key: bytes


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("relay")
    (tmp / "ws").mkdir()
    (tmp / "config").mkdir()
    with ScriptedModelServer().in_thread() as srv:
        env = {
            "OPENAI_BASE_URL": srv.base_url + "/v1",
            "OPENAI_API_KEY": OPENAI_KEY,
            "ANTHROPIC_BASE_URL": srv.base_url,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "XDG_CONFIG_HOME": str(tmp / "config"),  # no host config file but ours
        }
        bridge = BridgeProcess(tmp / "ws", tmp / "state", env=env)
        try:
            static, host_key = asyncio.run(_pair(bridge))
            yield Setup(srv, bridge, static, host_key)
        finally:
            bridge.stop()


async def _pair(bridge: BridgeProcess) -> tuple[KeyPair, bytes]:
    backend = CpythonCryptoBackend()
    link = parse_link(bridge.pair_url())
    static = await backend.generate_keypair()
    transport = await open_websocket(websocket_url(link.base_url), SUBPROTOCOL_PAIR)
    client = await KiteClient.handshake(
        transport,
        CpythonCryptoBackend(),
        mode=SUBPROTOCOL_PAIR,
        static=static,
        host_key=link.host_key,
        psk=link.secret,
        info={"name": "relay test"},
    )
    await client.close()
    return static, link.host_key


class Tap:
    """Wraps the client's channel: records every plaintext the device decrypts."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self.plaintexts: list[bytes] = []

    async def decrypt(self, frame: bytes) -> bytes:
        plain = await self._channel.decrypt(frame)
        self.plaintexts.append(bytes(plain))
        return plain

    def decrypt_sync(self, frame: Any) -> Any:
        """The client's push mode (CPython) decrypts synchronously, in the receive callback."""
        plain = self._channel.decrypt_sync(frame)
        self.plaintexts.append(bytes(plain))
        return plain

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


@contextlib.asynccontextmanager
async def connect(s: Setup) -> Any:
    transport = await open_websocket(websocket_url(s.bridge.url), SUBPROTOCOL_CONNECT)
    client = await KiteClient.handshake(
        transport,
        CpythonCryptoBackend(),
        mode=SUBPROTOCOL_CONNECT,
        static=s.static,
        host_key=s.host_key,
    )
    tap = Tap(client._channel)
    client._channel = tap  # type: ignore[assignment]
    try:
        yield client, tap
    finally:
        await client.close()
        received = b"".join(tap.plaintexts)
        for key in (OPENAI_KEY, ANTHROPIC_KEY):
            assert key.encode() not in received, "an API key reached the device"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def request(*messages: Message) -> ModelRequest:
    msgs = list(messages) or [Message("user", [TextPart("what is in src and tests?")])]
    return ModelRequest(model="", system="You are Kite.", messages=msgs, tools=[LS])


async def collect(p: HttpProvider, req: ModelRequest) -> list[StreamEvent]:
    return [e async for e in p.stream(req)]


async def run_task(p: HttpProvider) -> list[Message]:
    """A minimal agent loop: call the model, answer its tool calls, until it stops."""
    messages = request().messages
    for _ in range(4):
        end = (await collect(p, request(*messages)))[-1]
        assert isinstance(end, TurnEnd)
        messages.append(end.message)
        if end.stop_reason != "tool_use":
            return messages
        results = [
            ToolResultPart(c.id, f"{c.arguments['path']}: 3 files")
            for c in end.message.tool_calls()
        ]
        messages.append(Message("tool", list(results)))
    raise AssertionError("the task did not finish")


def task_script(split: int | None) -> list[Turn]:
    return [
        Turn(
            text="Let me look at both.",
            tool_calls=[ToolCall("ls", {"path": "src"}), ToolCall("ls", {"path": "tests"})],
            interleave=True,
            split=split,
        ),
        Turn(text="src and tests hold 3 files each.", usage=(90, 12), split=split),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_same_task_via_the_bridge_and_direct(setup: Setup, fmt: str) -> None:
    srv = setup.srv

    async def main() -> None:
        srv.script(task_script(split=13))
        async with connect(setup) as (client, tap):
            via_bridge = await run_task(make_provider(f"{fmt}/model-x", client=client))
        bridge_requests = list(srv.requests)

        srv.script(task_script(split=None))
        base = srv.base_url + ("/v1" if fmt == "openai" else "")
        direct = make_provider(f"{fmt}/model-x", route="direct", base_url=base, api_key=DEVICE_KEY)
        via_direct = await run_task(direct)
        direct_requests = list(srv.requests)

        assert via_bridge == via_direct
        assert via_bridge[-1].text() == "src and tests hold 3 files each."
        assert len(via_bridge) == 4  # user, assistant (2 calls), tool results, assistant
        # The relay forwards the body unchanged; only the credentials differ.
        assert [r.body for r in bridge_requests] == [r.body for r in direct_requests]
        assert [r.path for r in bridge_requests] == [r.path for r in direct_requests]
        if fmt == "openai":
            assert bridge_requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"
            assert direct_requests[0].headers["authorization"] == f"Bearer {DEVICE_KEY}"
        else:
            assert bridge_requests[0].headers["x-api-key"] == ANTHROPIC_KEY
            assert bridge_requests[0].headers["anthropic-version"] == "2023-06-01"
            assert direct_requests[0].headers["x-api-key"] == DEVICE_KEY
        assert tap.plaintexts  # frames were recorded (and checked for keys by `connect`)

    asyncio.run(main())


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_rejected_key_echoed_by_the_provider_is_redacted(setup: Setup, fmt: str) -> None:
    setup.srv.script([Turn.fail(401, "invalid credentials", echo_key=True)])
    key = OPENAI_KEY if fmt == "openai" else ANTHROPIC_KEY

    async def main() -> None:
        async with connect(setup) as (client, tap):
            with pytest.raises(ProviderError) as exc:
                await collect(make_provider(f"{fmt}/m", client=client), request())
            assert exc.value.status == 401 and not exc.value.retryable
            assert "rejected the API key" in str(exc.value)
            assert "[REDACTED]" in str(exc.value)
            assert "bridge host" in str(exc.value)  # where to fix it
            assert any(b"[REDACTED]" in p for p in tap.plaintexts)
        # The provider did receive the key (from the host), and echoed it.
        assert key in setup.srv.requests[0].headers.get("authorization", "") + setup.srv.requests[
            0
        ].headers.get("x-api-key", "")
        audit = (setup.bridge.state_dir / "audit.log").read_text()
        assert key not in audit and '"model.stream"' in audit

    asyncio.run(main())


@pytest.mark.parametrize("fmt", FORMATS)
def test_rate_limit_and_early_cut_are_retried_through_the_relay(setup: Setup, fmt: str) -> None:
    setup.srv.script(
        [
            Turn.fail(429, "slow down", retry_after=0),
            Turn(text="lost", cut_after=1),
            Turn(text="ok"),
        ]
    )

    async def main() -> None:
        async with connect(setup) as (client, _):
            sleeps = Sleeps()
            p = make_provider(f"{fmt}/m", client=client, retry=RetryPolicy(jitter=0), sleep=sleeps)
            events = await collect(p, request())
            assert events[-1].message.text() == "ok"  # type: ignore[union-attr]
            # retry-after: 0 crossed the relay (else the first wait would be the 1 s backoff),
            # then the cut stream waits the second backoff step.
            assert sleeps.delays == [0.0, 2.0]
            assert len(setup.srv.requests) == 3

    asyncio.run(main())


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_cut_after_output_reaches_the_device_as_a_retryable_error(
    setup: Setup, framing: str
) -> None:
    setup.srv.script([Turn(text="one two three", cut_after=3, framing=framing)])  # type: ignore[arg-type]

    async def main() -> None:
        async with connect(setup) as (client, _):
            seen: list[StreamEvent] = []
            with pytest.raises(ProviderError) as exc:
                async for e in make_provider("openai/m", client=client).stream(request()):
                    seen.append(e)
            assert any(isinstance(e, TextDelta) for e in seen)
            assert exc.value.retryable and exc.value.partial is not None
            assert len(setup.srv.requests) == 1
            assert (await client.call("sys.ping"))["pong"] is True  # the session is intact

    asyncio.run(main())


def test_cancelling_the_turn_closes_the_upstream_connection(setup: Setup) -> None:
    setup.srv.script([Turn(text="a long answer", hang=True)])

    async def main() -> None:
        async with connect(setup) as (client, _):
            stream = make_provider("anthropic/m", client=client).stream(request())
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for e in stream:
                    if isinstance(e, TextDelta):
                        break
            assert await asyncio.to_thread(setup.srv.client_gone.wait, 10)
            assert (await client.call("sys.ping"))["pong"] is True

    asyncio.run(main())


def test_op_contract_and_refusals(setup: Setup) -> None:
    setup.srv.script([Turn(text="raw")])

    async def main() -> None:
        async with connect(setup) as (client, tap):
            info = await client.call("model.info")
            assert info["providers"]["openai"] == {
                "configured": True,
                "keyed": True,
                "endpoint": setup.srv.base_url,
                "paths": ["/v1/chat/completions"],
            }
            assert info["providers"]["anthropic"]["configured"] is True

            events: list[tuple[str, Any]] = []
            chunks: list[tuple[bytes, bool]] = []
            body = {"model": "m", "messages": [], "stream": True}
            result = await client.call(
                "model.stream",
                {"provider": "openai", "path": "/v1/chat/completions", "body": body},
                on_event=lambda n, d: events.append((n, d)),
                on_chunk=lambda p, f: chunks.append((p, f)),
            )
            data = b"".join(p for p, _ in chunks)
            assert events == [("response", {"status": 200, "headers": result["headers"]})]
            assert result["headers"]["content-type"] == "text/event-stream"
            assert result["status"] == 200 and result["complete"] is True
            assert result["bytes"] == len(data) and chunks[-1][1] is True
            assert data.endswith(b"data: [DONE]\n\n") and b'"content": "raw"' in data

            async def refused(args: dict[str, Any]) -> str:
                with pytest.raises(RpcError) as exc:
                    await client.call("model.stream", args)
                return exc.value.code

            ok = {"provider": "openai", "path": "/v1/chat/completions", "body": body}
            assert await refused({**ok, "path": "/v1/completions"}) == "EACCES"
            assert await refused({**ok, "path": "/../../admin"}) == "EACCES"
            assert await refused({**ok, "provider": "gemini"}) == "EINVAL"
            assert await refused({**ok, "body": [1]}) == "EINVAL"
            assert await refused({**ok, "url": "http://evil.example/"}) == "EINVAL"
            assert await refused({**ok, "base_url": "http://evil.example/"}) == "EINVAL"
            assert len(setup.srv.requests) == 1  # nothing refused went upstream
            assert all(OPENAI_KEY.encode() not in p for p in tap.plaintexts)

    asyncio.run(main())


# -- in-process: configuration, redaction, the op's failure paths ------------------------------


def test_host_configuration_sources(tmp_path: Path) -> None:
    none = model_ops.load_host_providers({}, None)
    assert not none["openai"].usable
    assert "OPENAI_API_KEY" in (none["openai"].problem or "")

    keyless = model_ops.load_host_providers({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"}, None)
    assert keyless["openai"].usable and keyless["openai"].api_key is None

    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        '[policy]\nread_only = false\n\n[model.anthropic]\napi_key = "file-key"\n'
        'base_url = "https://proxy.example/anthropic"\n\n[model.openai]\napi_key = "file-openai"\n'
    )
    both = model_ops.load_host_providers({"OPENAI_API_KEY": "env-openai"}, cfg)
    assert both["anthropic"].api_key == "file-key"
    assert both["anthropic"].origin == "https://proxy.example"
    assert both["openai"].api_key == "env-openai"  # the environment wins
    assert "file-key" not in repr(both)

    bad = model_ops.load_host_providers(
        {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "ftp://x"}, None
    )
    assert "not an http(s) URL" in (bad["anthropic"].problem or "")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model.openai\n")
    assert not model_ops.load_host_providers({}, broken)["openai"].usable


@settings(max_examples=150, deadline=None)
@given(
    # keys are lower-case letters, digits, '-' and '_' (never overlapping the marker)
    secret=st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=12, max_size=24).map(
        str.encode
    ),
    pieces=st.lists(st.binary(max_size=20), max_size=8),
    inserts=st.lists(st.integers(min_value=0, max_value=8), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
)
def test_redactor_on_any_split(
    secret: bytes, pieces: list[bytes], inserts: list[int], cuts: list[int]
) -> None:
    for i in inserts:
        pieces.insert(min(i, len(pieces)), secret)
    data = b"".join(pieces)
    points = sorted({min(c, len(data)) for c in cuts})
    r = model_ops.Redactor([secret])
    out = b"".join(
        r.feed(data[a:b]) for a, b in zip([0, *points], [*points, len(data)], strict=True)
    )
    out += r.flush()
    assert out == data.replace(secret, model_ops.REDACTED)
    assert secret not in out
    assert model_ops.Redactor([]).feed(data) == data


def test_redactor_holds_back_only_a_possible_key_prefix() -> None:
    r = model_ops.Redactor([b"sk-secret-0123"])
    assert r.feed(b"data: {}\n\n") == b"data: {}\n\n"  # nothing delayed at event ends
    assert r.feed(b"key sk-se") == b"key "
    assert r.feed(b"cret-0123!") == b"[REDACTED]!"
    assert r.feed(b"sk") == b"" and r.flush() == b"sk"


def test_short_placeholder_keys_are_not_redacted() -> None:
    """A local server's placeholder key ("ollama", "k") is no secret; redacting it would
    corrupt ordinary text such as "tokens"."""
    r = model_ops.Redactor([b"k", b"ollama"])
    assert r.feed(b"tokens from ollama") + r.flush() == b"tokens from ollama"


class _Ctx:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.chunks: list[tuple[bytes, bool]] = []
        self.audit: dict[str, Any] = {}

    async def emit(self, name: str, data: Any) -> None:
        self.events.append((name, data))

    async def send_chunk(self, payload: bytes, final: bool) -> None:
        self.chunks.append((payload, final))


class _FailingHttp:
    def __init__(self, response: HttpResponse | None = None) -> None:
        self.response = response

    async def stream(self, method: str, url: str, headers: Any, body: Any) -> HttpResponse:
        if self.response is None:
            raise HttpError(f"cannot connect to {url}: connection refused (key {OPENAI_KEY})")
        return self.response


@pytest.fixture
def relay_config() -> Iterator[None]:
    yield
    model_ops.configure()  # back to lazy loading from the environment


def _call(args: dict[str, Any]) -> tuple[_Ctx, Any]:
    ctx = _Ctx()

    async def main() -> Any:
        return await model_ops.model_stream(ctx, args)  # type: ignore[arg-type]

    try:
        return ctx, asyncio.run(main())
    except RpcError as exc:
        return ctx, exc


def test_op_failure_paths_in_process(relay_config: None) -> None:
    providers = model_ops.load_host_providers({"OPENAI_API_KEY": OPENAI_KEY}, None)
    args = {"provider": "openai", "path": "/v1/chat/completions", "body": {"model": "m"}}

    model_ops.configure(providers, _FailingHttp())
    _, exc = _call(args)
    assert isinstance(exc, RpcError) and exc.code == "EIO"
    assert "cannot reach the openai API" in exc.message and OPENAI_KEY not in exc.message

    _, exc = _call({**args, "provider": "anthropic", "path": "/v1/messages"})
    assert isinstance(exc, RpcError) and exc.code == "EACCES"
    assert "ANTHROPIC_API_KEY" in exc.message

    async def cut_body() -> Any:
        yield b'data: {"choices": []}\n\n'
        yield b"partial " + OPENAI_KEY.encode()[:5]
        raise HttpError("the response from http://x was cut short: connection reset")

    model_ops.configure(
        providers, _FailingHttp(HttpResponse(200, {"set-cookie": "s=1"}, cut_body()))
    )
    ctx, result = _call(args)
    assert result["complete"] is False and "cut short" in result["error"]
    assert result["headers"] == {}  # set-cookie is not passed on
    assert ctx.chunks[-1][1] is True  # the chunk stream still ends
    assert ctx.audit["provider"] == "openai" and ctx.audit["complete"] is False
