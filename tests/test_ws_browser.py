"""The cross-runtime handshake: agent_core inside Pyodide (WebCrypto + the JS WebSocket) against a
real CPython bridge.

Runs only inside Pyodide, and only when ``KITE_PAIR_URL`` holds a fresh ``kite pair --json`` URL:
``tests/test_pyodide_suite.py`` starts the bridge, makes the URL and runs ``tests/pyodide/run.mjs``
with it, then checks on the host what these tests did (the file written, the device paired).
This is the browser's code path end to end except for the browser itself: `KiteClient`, the
WebCrypto backend with a non-extractable device key, and `ws_browser` over Node's ``WebSocket``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import pytest

from agent_core.channel.crypto import CryptoBackend, KeyPair
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.client import KiteClient
from agent_core.pairing import PairingLink, parse_link, websocket_url
from agent_core.rpc.errors import RpcError
from agent_core.runtime import IS_PYODIDE, default_crypto_backend, open_transport
from agent_core.transport.base import TransportClosed
from tests.runtime_support import run

PAIR_URL = os.environ.get("KITE_PAIR_URL", "")
DEVICE_NAME = "pyodide test device"
NOTE_PATH = "notes/from-pyodide.txt"
NOTE = "written by agent_core inside Pyodide, over WebCrypto Noise ✓\n"
"""tests/test_pyodide_suite.py checks for exactly this file on the host afterwards."""

pytestmark = [
    pytest.mark.skipif(not IS_PYODIDE, reason="the browser WebSocket transport: inside Pyodide"),
    pytest.mark.skipif(not PAIR_URL, reason="no KITE_PAIR_URL (tests/test_pyodide_suite.py)"),
]


@dataclass
class Device:
    link: PairingLink
    ws_url: str
    backend: CryptoBackend
    static: KeyPair


@pytest.fixture(scope="module")
def device() -> Device:
    link = parse_link(PAIR_URL)
    backend = default_crypto_backend()
    return Device(link, websocket_url(link.base_url), backend, run(backend.generate_keypair()))


async def pair(d: Device) -> KiteClient:
    transport = await open_transport(d.ws_url, SUBPROTOCOL_PAIR)
    return await KiteClient.handshake(
        transport,
        d.backend,
        mode=SUBPROTOCOL_PAIR,
        static=d.static,
        host_key=d.link.host_key,
        psk=d.link.secret,
        info={"name": DEVICE_NAME},
    )


async def connect(d: Device) -> KiteClient:
    transport = await open_transport(d.ws_url, SUBPROTOCOL_CONNECT)
    return await KiteClient.handshake(
        transport, d.backend, mode=SUBPROTOCOL_CONNECT, static=d.static, host_key=d.link.host_key
    )


def test_pair_then_ping_write_read_exec(device: Device) -> None:
    """Pair with the one-time secret (XXpsk3), then the four fixed ops."""
    assert device.static.private.extractable is False

    async def go() -> None:
        client = await pair(device)
        try:
            assert client.server_info["server"]["name"]
            assert (await client.call("sys.ping"))["pong"] is True
            wrote = await client.call("fs.write", {"path": NOTE_PATH, "content": NOTE})
            assert wrote["sha256"] == hashlib.sha256(NOTE.encode()).hexdigest()
            read = await client.call("fs.read", {"path": NOTE_PATH})
            assert read["content"] == NOTE and read["sha256"] == wrote["sha256"]
            events: list[tuple[str, Any]] = []
            done = await client.call(
                "exec.run",
                {"argv": ["echo", "hello from", "pyodide"]},
                on_event=lambda name, data: events.append((name, data)),
            )
            assert done["exit_code"] == 0 and done["timed_out"] is False
            assert "".join(d for n, d in events if n == "stdout") == "hello from pyodide\n"
            with pytest.raises(RpcError) as info:
                await client.call("fs.read", {"path": "../outside.txt"})
            assert info.value.code == "EACCES"
        finally:
            await client.close()

    run(go())


def test_reconnect_with_the_paired_key(device: Device) -> None:
    """The same non-extractable key connects again, now with plain XX (no secret)."""

    async def go() -> None:
        client = await connect(device)
        try:
            assert (await client.call("sys.ping"))["pong"] is True
            big = "x" * 200_000  # more than one Noise message each way: envelope chunks
            await client.call("fs.write", {"path": "big.txt", "content": big})
            assert (await client.call("fs.read", {"path": "big.txt"}))["content"] == big
        finally:
            await client.close()
        with pytest.raises(TransportClosed):
            await client.transport.send(b"after close")
        with pytest.raises(TransportClosed):
            await client.transport.recv()

    run(go())


def test_unknown_device_is_closed_without_a_reply(device: Device) -> None:
    """A key the bridge never paired completes no handshake: the socket just closes."""

    async def go() -> None:
        stranger = Device(
            device.link, device.ws_url, device.backend, await device.backend.generate_keypair()
        )
        transport = await open_transport(stranger.ws_url, SUBPROTOCOL_CONNECT)
        client = await KiteClient.handshake(
            transport,
            stranger.backend,
            mode=SUBPROTOCOL_CONNECT,
            static=stranger.static,
            host_key=stranger.link.host_key,
        )
        try:
            with pytest.raises(ConnectionError):
                await client.call("sys.ping", timeout=10)
        finally:
            await client.close()

    run(go())


def test_refused_upgrade_and_dead_port_raise_transport_closed(device: Device) -> None:
    async def go() -> None:
        with pytest.raises(TransportClosed):
            await open_transport(device.ws_url, "kite.v0")  # the bridge answers 400
        with pytest.raises(TransportClosed):
            await open_transport("ws://127.0.0.1:9/kite/v1", SUBPROTOCOL_CONNECT)

    run(go())
