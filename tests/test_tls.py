"""`kite serve --tls-cert/--tls-key`: HTTPS and WSS on the same port, pairing links in https."""

from __future__ import annotations

import ssl
from pathlib import Path

from tests.harness import BridgeProcess, IndependentClient, parse_pair_url, self_signed_cert


def test_tls_pairing_and_ping(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    bridge = BridgeProcess(ws, tmp_path / "state", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert bridge.url.startswith("https://")
        url = bridge.pair_url()
        assert url.startswith("https://127.0.0.1:")
        secret, host_key = parse_pair_url(url)
        ctx = ssl.create_default_context(cafile=str(cert))
        client = IndependentClient.handshake(
            f"wss://127.0.0.1:{bridge.port}/kite/v1",
            static_private=IndependentClient.new_static_key(),
            host_key=host_key,
            psk=secret,
            ssl=ctx,
        )
        assert client.request("sys.ping").result["pong"] is True
        client.close()
    finally:
        bridge.stop()
