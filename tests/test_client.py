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
