"""agent_core's own client (the code the browser will run) against a real bridge subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR, HostKeyMismatch
from agent_core.client import ChannelClosed, KiteClient
from agent_core.pairing import parse_link, websocket_url
from agent_core.rpc.errors import RpcError
from agent_core.transport.ws_cpython import open_websocket
from tests.harness import BridgeProcess, kite


@pytest.fixture
def bridge(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir()
    b = BridgeProcess(ws, tmp_path / "state")
    try:
        yield b
    finally:
        b.stop()


async def pair(bridge: BridgeProcess, backend: CpythonCryptoBackend, static=None) -> KiteClient:
    link = parse_link(bridge.pair_url())
    static = static or await backend.generate_keypair()
    transport = await open_websocket(websocket_url(link.base_url), SUBPROTOCOL_PAIR)
    return await KiteClient.handshake(
        transport,
        backend,
        mode=SUBPROTOCOL_PAIR,
        static=static,
        host_key=link.host_key,
        psk=link.secret,
        info={"name": "kite test"},
    )


def test_pair_then_reconnect_and_large_payloads(bridge: BridgeProcess) -> None:
    async def main() -> None:
        backend = CpythonCryptoBackend()
        static = await backend.generate_keypair()
        client = await pair(bridge, backend, static)
        assert (await client.call("sys.ping"))["pong"] is True

        # A text larger than one frame travels as envelope chunks, both ways.
        text = "line ✓ " * 300_000
        wrote = await client.call("fs.write", {"path": "big.txt", "content": text})
        assert wrote["sha256"] == hashlib.sha256(text.encode()).hexdigest()
        read = await client.call("fs.read", {"path": "big.txt"})
        assert read["content"] == text

        # Binary upload and download through data chunks.
        blob = os.urandom(3 * 65536 + 5)
        up = await client.call("fs.write", {"path": "b.bin", "binary": True}, upload=blob)
        assert up["sha256"] == hashlib.sha256(blob).hexdigest()
        got = bytearray()
        res = await client.call(
            "fs.read", {"path": "b.bin", "binary": True}, on_chunk=lambda p, f: got.extend(p)
        )
        assert bytes(got) == blob and res["sha256"] == hashlib.sha256(blob).hexdigest()

        with pytest.raises(RpcError) as exc:
            await client.call("fs.read", {"path": "missing.txt"})
        assert exc.value.code == "ENOENT"
        await client.close()

        link = parse_link(bridge.pair_url())
        transport = await open_websocket(websocket_url(link.base_url), SUBPROTOCOL_CONNECT)
        again = await KiteClient.handshake(
            transport, backend, mode=SUBPROTOCOL_CONNECT, static=static, host_key=link.host_key
        )
        assert (await again.call("sys.ping"))["pong"] is True
        await again.close()

    asyncio.run(main())


def test_wrong_host_key_aborts_before_identifying(bridge: BridgeProcess) -> None:
    async def main() -> None:
        backend = CpythonCryptoBackend()
        link = parse_link(bridge.pair_url())
        transport = await open_websocket(websocket_url(link.base_url), SUBPROTOCOL_PAIR)
        with pytest.raises(HostKeyMismatch):
            await KiteClient.handshake(
                transport,
                backend,
                mode=SUBPROTOCOL_PAIR,
                static=await backend.generate_keypair(),
                host_key=os.urandom(32),
                psk=link.secret,
            )

    asyncio.run(main())
    assert kite("devices", "list", "--json", state_dir=bridge.state_dir).stdout.strip() == "[]"


def test_task_cancellation_cancels_on_the_bridge(bridge: BridgeProcess) -> None:
    async def main() -> None:
        client = await pair(bridge, CpythonCryptoBackend())
        pids: list[int] = []

        def on_event(name: str, data: str) -> None:
            if name == "stdout":
                pids.extend(int(x) for x in data.split())

        task = asyncio.create_task(
            client.call(
                "exec.run",
                {"command": "trap '' TERM; sleep 300 & echo $!; wait"},
                on_event=on_event,
            )
        )
        while not pids:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            try:
                os.kill(pids[0], 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("cancelled command still running")
        assert (await client.call("sys.ping"))["pong"]
        await client.close()

    asyncio.run(main())


def test_revocation_fails_pending_calls(bridge: BridgeProcess) -> None:
    async def main() -> None:
        client = await pair(bridge, CpythonCryptoBackend())
        slow = asyncio.create_task(client.call("exec.run", {"argv": ["sleep", "30"]}))
        await asyncio.sleep(0.2)
        dev = kite("devices", "list", "--json", state_dir=bridge.state_dir).stdout
        dev_id = json.loads(dev)[0]["id"]
        await asyncio.to_thread(kite, "devices", "revoke", dev_id, state_dir=bridge.state_dir)
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(slow, 10)
        assert client.closed

    asyncio.run(main())


# -- the two receive modes (push: replies handled in the transport callback; pull: reader task) --


@pytest.fixture(params=["push", "pull"])
def receive_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pull":
        from agent_core.transport import ws_cpython

        monkeypatch.setattr(ws_cpython.WebSocketTransport, "start_push", lambda self, cb: False)
    return request.param


def test_concurrent_calls_and_cancels_in_both_receive_modes(
    bridge: BridgeProcess, receive_mode: str
) -> None:
    files = {f"f{i}.txt": f"file {i}\n" * (i * 37 + 1) for i in range(24)}
    for name, text in files.items():
        (bridge.workspace / name).write_text(text)

    async def main() -> None:
        client = await pair(bridge, CpythonCryptoBackend())
        assert client.push_mode is (receive_mode == "push")
        # Many requests in flight at once: every reply reaches its own caller.
        results = await asyncio.gather(
            *(client.call("fs.read", {"path": name}) for name in files),
            client.call("exec.run", {"argv": ["echo", "hi"]}),
        )
        for (name, text), got in zip(files.items(), results, strict=False):
            assert got["content"] == text, name
        assert results[-1]["exit_code"] == 0

        # A read cancelled before its reply came: the late reply is dropped, nothing breaks.
        for _ in range(20):
            task = asyncio.create_task(client.call("fs.read", {"path": "f3.txt"}))
            await asyncio.sleep(0)  # the request is sent; its reply is not in yet
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Cancelled while other calls are waiting too: those still get their replies.
        waiting = [asyncio.create_task(client.call("fs.read", {"path": n})) for n in files]
        doomed = asyncio.create_task(client.call("exec.run", {"argv": ["sleep", "30"]}))
        await asyncio.sleep(0.1)
        doomed.cancel()
        got = await asyncio.gather(*waiting)
        assert [g["content"] for g in got] == list(files.values())
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert (await client.call("fs.read", {"path": "f5.txt"}))["content"] == files["f5.txt"]
        assert not client.closed
        await client.close()
        assert client.closed

    asyncio.run(main())


def test_slow_async_chunk_callback_keeps_order_in_both_receive_modes(
    bridge: BridgeProcess, receive_mode: str
) -> None:
    blob = os.urandom(6 * 1024 * 1024 + 123)  # ~100 chunks: more than the push backlog limit
    (bridge.workspace / "blob.bin").write_bytes(blob)

    async def main() -> None:
        client = await pair(bridge, CpythonCryptoBackend())
        got = bytearray()
        finals: list[bool] = []

        async def on_chunk(payload: bytes, final: bool) -> None:
            await asyncio.sleep(0.002 if len(finals) % 10 == 0 else 0)  # a slow consumer
            got.extend(payload)
            finals.append(final)

        read = asyncio.create_task(
            client.call("fs.read", {"path": "blob.bin", "binary": True}, on_chunk=on_chunk)
        )
        # Other calls keep working while the backlog drains.
        pings = [await client.call("sys.ping") for _ in range(5)]
        res = await read
        assert all(p["pong"] for p in pings)
        assert bytes(got) == blob and res["sha256"] == hashlib.sha256(blob).hexdigest()
        assert finals[-1] is True and not any(finals[:-1])
        assert res["chunks"] == len(finals)
        # After the backlog: replies are handled directly again.
        assert (await client.call("sys.ping"))["pong"]
        await client.close()

    asyncio.run(main())


def test_a_raising_callback_fails_the_channel_in_both_receive_modes(
    bridge: BridgeProcess, receive_mode: str
) -> None:
    (bridge.workspace / "x.bin").write_bytes(os.urandom(200_000))

    async def main() -> None:
        client = await pair(bridge, CpythonCryptoBackend())

        def on_chunk(payload: bytes, final: bool) -> None:
            raise RuntimeError("consumer broke")

        with pytest.raises(ChannelClosed, match="consumer broke"):
            await client.call("fs.read", {"path": "x.bin", "binary": True}, on_chunk=on_chunk)
        assert client.closed
        with pytest.raises(ChannelClosed):
            await client.call("sys.ping")
        await client.close()

    asyncio.run(main())


def test_cancelling_a_wait_for_the_end_cancels_the_waiter_only(bridge: BridgeProcess) -> None:
    """A task parked in `wait_closed` can be cancelled (the web app does it to switch hosts);
    the connection stays usable. Before the fix the cancellation was swallowed, so the task
    went on as if the connection had ended."""

    async def main() -> None:
        client = await pair(bridge, CpythonCryptoBackend())
        try:
            after: list[str] = []

            async def watcher() -> None:
                await client.wait_closed()
                after.append("returned")  # must not happen: we are cancelled, not closed

            task = asyncio.ensure_future(watcher())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert after == []
            assert await client.call("sys.ping") is not None  # still connected

            closer = asyncio.ensure_future(client.close())
            await asyncio.wait_for(client.wait_closed(), 10)  # and it does end on close
            await closer
        finally:
            await client.close()

    asyncio.run(main())
