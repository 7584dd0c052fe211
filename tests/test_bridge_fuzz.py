"""Hypothesis against a live bridge: hostile handshake bytes never get an application message
and never hurt the bridge. (Unit-level fuzzing of the decoders is in test_frames/test_noise_*.)"""

from __future__ import annotations

import http.client
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.harness import BridgeProcess

FUZZ = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _silent(ws, n: int = 3) -> list[bytes]:
    """Everything the server sends before closing (bounded)."""
    got = []
    try:
        for _ in range(n):
            got.append(ws.recv(timeout=3))
    except (ConnectionClosed, TimeoutError):
        pass
    return got


def _assert_healthy(bridge: BridgeProcess) -> None:
    """Still serving (this address may now be rate-limited for handshakes, rightly)."""
    assert bridge.alive()
    conn = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200


def _start(tmp_path: Path) -> BridgeProcess:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return BridgeProcess(ws, tmp_path / "state")


def test_random_first_messages(tmp_path: Path) -> None:
    bridge = _start(tmp_path)
    try:

        @FUZZ
        @given(mode=st.sampled_from(["kite.v1", "kite.v1.pair"]), data=st.binary(max_size=400))
        def attempt(mode: str, data: bytes) -> None:
            try:
                ws = connect(bridge.ws_url, subprotocols=[mode])  # type: ignore[list-item]
            except InvalidStatus as exc:  # rate-limited: refused before any handshake
                assert exc.response.status_code == 429
                return
            ws.send(data)
            got = _silent(ws)
            ws.close()
            # At most Noise message 2 (a handshake message, never an application message), and
            # only when message 1 had exactly the right length for the mode.
            assert len(got) <= 1
            if got:
                assert len(data) == (32 if mode == "kite.v1" else 48)

        attempt()
        _assert_healthy(bridge)
    finally:
        bridge.stop()


def test_random_third_messages(tmp_path: Path) -> None:
    bridge = _start(tmp_path)
    try:

        @FUZZ
        @given(tail=st.binary(max_size=300))
        def attempt(tail: bytes) -> None:
            noise = NoiseConnection.from_name(b"Noise_XX_25519_AESGCM_SHA256")
            noise.set_as_initiator()
            noise.set_prologue(b"kite.v1")
            noise.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
            noise.start_handshake()
            try:
                ws = connect(bridge.ws_url, subprotocols=["kite.v1"])  # type: ignore[list-item]
            except InvalidStatus as exc:
                assert exc.response.status_code == 429
                return
            ws.send(bytes(noise.write_message(b"")))
            ws.recv(timeout=5)  # message 2
            ws.send(tail)  # garbage instead of message 3
            assert _silent(ws) == []
            ws.close()

        attempt()
        _assert_healthy(bridge)
    finally:
        bridge.stop()
