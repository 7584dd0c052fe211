"""Acceptance: an independent client pairs, works and reconnects; hostile peers get nothing."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.harness import (
    BridgeProcess,
    IndependentClient,
    kite,
    pair_independent,
    parse_pair_url,
)


@pytest.fixture
def bridge(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello kite\n")
    b = BridgeProcess(ws, tmp_path / "state")
    try:
        yield b
    finally:
        b.stop()


def device_keys(state_dir: Path) -> list[dict]:
    return json.loads(kite("devices", "list", "--json", state_dir=state_dir).stdout)


def expect_refused(client_fn) -> None:
    """The server closes without sending any application message."""
    with pytest.raises((ConnectionClosed, PermissionError)):
        client_fn()


def test_pair_ping_read_write_exec_reconnect(bridge: BridgeProcess) -> None:
    client, static, host_key = pair_independent(bridge, name="phone")
    assert client.server_info["server"]["name"] == "kite-bridge"

    pong = client.request("sys.ping")
    assert pong.result and pong.result["pong"] is True

    read = client.request("fs.read", {"path": "hello.txt"})
    assert read.result and read.result["content"] == "hello kite\n"
    assert read.result["size"] == len("hello kite\n")

    wrote = client.request("fs.write", {"path": "sub/new.txt", "content": "été ✓\n"})
    assert wrote.result is not None
    assert (bridge.workspace / "sub" / "new.txt").read_text() == "été ✓\n"
    import hashlib

    assert wrote.result["sha256"] == hashlib.sha256("été ✓\n".encode()).hexdigest()

    ran = client.request("exec.run", {"argv": ["echo", "hi", "there"]})
    assert ran.result and ran.result["exit_code"] == 0 and ran.result["timed_out"] is False
    assert "".join(d for e, d in ran.events if e == "stdout") == "hi there\n"
    client.close()

    devices = device_keys(bridge.state_dir)
    assert [d["name"] for d in devices] == ["phone"]

    # Later: a plain XX connection with the registered key works.
    again = IndependentClient.handshake(bridge.ws_url, static_private=static, host_key=host_key)
    assert again.request("sys.ping").result["pong"] is True
    again.close()


def test_exec_streams_before_exit(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    rid = client.next_id
    client.next_id += 1
    client.send_plain(
        json.dumps(
            {"id": rid, "op": "exec.run", "args": {"command": "echo first; sleep 1; echo second"}}
        ).encode()
    )
    t0 = time.monotonic()
    first = json.loads(client.recv_plain())
    assert first == {"id": rid, "event": "stdout", "data": "first\n"}
    assert time.monotonic() - t0 < 0.9  # arrived before the command finished
    client.close()


def test_cancel_kills_command(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    rid = client.next_id
    client.next_id += 2
    client.send_plain(
        json.dumps(
            {
                "id": rid,
                "op": "exec.run",
                "args": {"command": "trap '' TERM; sleep 300 & echo $!; wait"},
            }
        ).encode()
    )
    pid = int(json.loads(client.recv_plain())["data"].strip())
    client.send_plain(json.dumps({"id": rid + 1, "op": "cancel", "args": {"target": rid}}).encode())
    replies = {}
    deadline = time.monotonic() + 15
    while len(replies) < 2 and time.monotonic() < deadline:
        msg = json.loads(client.recv_plain())
        if "event" not in msg:
            replies[msg["id"]] = msg
    assert replies[rid + 1]["result"]["cancelled"] is True
    assert replies[rid]["error"]["code"] == "ECANCELED"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    client.close()


def test_disconnect_kills_command(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    client.send_plain(
        json.dumps(
            {"id": 1, "op": "exec.run", "args": {"command": "sleep 300 & echo $!; wait"}}
        ).encode()
    )
    pid = int(json.loads(client.recv_plain())["data"].strip())
    client.ws.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail("the command outlived its client")


# -- refusals before the upgrade ---------------------------------------------------------


def test_cross_origin_upgrade_is_403(bridge: BridgeProcess) -> None:
    with pytest.raises(InvalidStatus) as exc:
        connect(bridge.ws_url, subprotocols=["kite.v1"], origin="http://evil.example")  # type: ignore[list-item,arg-type]
    assert exc.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as exc:  # another port on localhost is another site
        connect(bridge.ws_url, subprotocols=["kite.v1"], origin="http://127.0.0.1:1")  # type: ignore[list-item,arg-type]
    assert exc.value.response.status_code == 403
    ok = connect(bridge.ws_url, subprotocols=["kite.v1"], origin=bridge.url.rstrip("/"))  # type: ignore[list-item,arg-type]
    ok.close()


def raw_upgrade(port: int, host_header: str, protocol: str | None = "kite.v1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {
        "Host": host_header,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    if protocol:
        headers["Sec-WebSocket-Protocol"] = protocol
    conn.putrequest("GET", "/kite/v1", skip_host=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_foreign_host_is_403(bridge: BridgeProcess) -> None:
    assert raw_upgrade(bridge.port, "attacker.example") == 403
    assert raw_upgrade(bridge.port, f"attacker.example:{bridge.port}") == 403
    assert raw_upgrade(bridge.port, f"localhost:{bridge.port}") == 101


def test_missing_or_unknown_subprotocol_is_400(bridge: BridgeProcess) -> None:
    assert raw_upgrade(bridge.port, f"127.0.0.1:{bridge.port}", None) == 400
    assert raw_upgrade(bridge.port, f"127.0.0.1:{bridge.port}", "chat") == 400


def test_status_page_is_served_without_a_built_app(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "no-app").mkdir()
    b = BridgeProcess(tmp_path / "ws", tmp_path / "state", "--web-dir", str(tmp_path / "no-app"))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        assert b"Kite bridge" in resp.read()
        conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=5)
        conn.request("GET", "/../state/host_key")
        assert conn.getresponse().status == 404
    finally:
        b.stop()


# -- refusals in the handshake -----------------------------------------------------------


def test_unregistered_key_is_refused(bridge: BridgeProcess) -> None:
    _, host_key = parse_pair_url(bridge.pair_url())

    def attempt() -> None:
        c = IndependentClient.handshake(
            bridge.ws_url, static_private=os.urandom(32), host_key=host_key
        )
        c.recv_plain(timeout=5)  # must not get any application message

    expect_refused(attempt)
    assert device_keys(bridge.state_dir) == []


def test_wrong_host_key_client_aborts(bridge: BridgeProcess) -> None:
    secret, _host_key = parse_pair_url(bridge.pair_url())
    with pytest.raises(PermissionError):
        IndependentClient.handshake(
            bridge.ws_url, static_private=os.urandom(32), host_key=os.urandom(32), psk=secret
        )
    assert device_keys(bridge.state_dir) == []


def test_pairing_secret_reuse_expiry_and_wrong(bridge: BridgeProcess) -> None:
    secret, host_key = parse_pair_url(bridge.pair_url())
    first = IndependentClient.handshake(
        bridge.ws_url, static_private=os.urandom(32), host_key=host_key, psk=secret, name="one"
    )
    assert first.request("sys.ping").result["pong"]
    first.close()

    def reuse() -> None:
        c = IndependentClient.handshake(
            bridge.ws_url, static_private=os.urandom(32), host_key=host_key, psk=secret
        )
        c.recv_plain(timeout=5)

    expect_refused(reuse)

    def wrong() -> None:
        c = IndependentClient.handshake(
            bridge.ws_url, static_private=os.urandom(32), host_key=host_key, psk=os.urandom(32)
        )
        c.recv_plain(timeout=5)

    expect_refused(wrong)

    expired_url = json.loads(
        kite("pair", "--json", "--ttl", "1", state_dir=bridge.state_dir).stdout
    )["url"]
    expired, _ = parse_pair_url(expired_url)
    time.sleep(1.2)

    def late() -> None:
        c = IndependentClient.handshake(
            bridge.ws_url, static_private=os.urandom(32), host_key=host_key, psk=expired
        )
        c.recv_plain(timeout=5)

    expect_refused(late)
    assert [d["name"] for d in device_keys(bridge.state_dir)] == ["one"]


def test_revoked_device_refused_and_live_connection_closed(bridge: BridgeProcess) -> None:
    client, static, host_key = pair_independent(bridge)
    dev_id = device_keys(bridge.state_dir)[0]["id"]
    kite("devices", "revoke", dev_id, state_dir=bridge.state_dir)
    with pytest.raises(ConnectionClosed):
        for _ in range(100):  # closed by the bridge within its poll interval
            client.request("sys.ping", timeout=2)
            time.sleep(0.05)

    def again() -> None:
        c = IndependentClient.handshake(bridge.ws_url, static_private=static, host_key=host_key)
        c.recv_plain(timeout=5)

    expect_refused(again)


def test_pairing_failures_are_rate_limited(bridge: BridgeProcess) -> None:
    _, host_key = parse_pair_url(bridge.pair_url())
    for _ in range(5):
        with pytest.raises(ConnectionClosed):
            c = IndependentClient.handshake(
                bridge.ws_url, static_private=os.urandom(32), host_key=host_key, psk=os.urandom(32)
            )
            c.recv_plain(timeout=5)
    with pytest.raises(InvalidStatus) as exc:
        IndependentClient.handshake(
            bridge.ws_url, static_private=os.urandom(32), host_key=host_key, psk=os.urandom(32)
        )
    assert exc.value.response.status_code == 429


# -- refusals on an established channel --------------------------------------------------


def test_tampered_frame_closes(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    frame = bytearray(client.noise.encrypt(b'{"id":1,"op":"sys.ping","args":{}}'))
    frame[5] ^= 0x01
    client.ws.send(bytes(frame))
    with pytest.raises(ConnectionClosed):
        client.ws.recv(timeout=5)


def test_replayed_frame_closes(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    frame = client.noise.encrypt(b'{"id":1,"op":"sys.ping","args":{}}')
    client.ws.send(frame)
    json.loads(client.recv_plain())
    client.ws.send(frame)  # same nonce again
    with pytest.raises(ConnectionClosed):
        client.ws.recv(timeout=5)


def test_reordered_frames_close(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    f1 = client.noise.encrypt(b'{"id":1,"op":"sys.ping","args":{}}')
    f2 = client.noise.encrypt(b'{"id":2,"op":"sys.ping","args":{}}')
    client.ws.send(f2)
    client.ws.send(f1)
    with pytest.raises(ConnectionClosed):
        client.ws.recv(timeout=5)


def test_oversized_frame_closes(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    client.ws.send(os.urandom(70000))
    with pytest.raises(ConnectionClosed) as exc:
        client.ws.recv(timeout=5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009


def test_malformed_json_and_unknown_op(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    client.send_plain(b'{"id": 1, "op": ')
    bad = json.loads(client.recv_plain())
    assert bad["ok"] is False and bad["error"]["code"] == "EINVAL"
    unknown = client.request("fs.format_disk")
    assert unknown.error and unknown.error["code"] == "EUNSUPPORTED"
    not_obj = client.request("fs.read", None)
    assert not_obj.error and not_obj.error["code"] == "EINVAL"
    # The session is still usable.
    assert client.request("sys.ping").result["pong"]


@pytest.mark.parametrize(
    "path",
    ["../outside.txt", "a/../../outside.txt", "/etc/passwd", "link_out/x", "evil_link", "a\x00b"],
)
def test_jail_escapes_over_the_wire(bridge: BridgeProcess, path: str) -> None:
    outside = bridge.workspace.parent / "outside.txt"
    outside.write_text("secret")
    (bridge.workspace / "a").mkdir(exist_ok=True)
    if not (bridge.workspace / "link_out").is_symlink():
        (bridge.workspace / "link_out").symlink_to(bridge.workspace.parent)
        (bridge.workspace / "evil_link").symlink_to(outside)
    client, _, _ = pair_independent(bridge)
    read = client.request("fs.read", {"path": path})
    assert read.error and read.error["code"] in ("EACCES", "EINVAL"), read
    write = client.request("fs.write", {"path": path, "content": "pwned"})
    assert write.error and write.error["code"] in ("EACCES", "EINVAL"), write
    assert outside.read_text() == "secret"
    assert not (bridge.workspace.parent / "x").exists()


def test_bridge_survives_garbage_handshakes(bridge: BridgeProcess) -> None:
    for payload in (b"", b"\x00" * 32, os.urandom(31), os.urandom(33), os.urandom(2000)):
        ws = connect(bridge.ws_url, subprotocols=["kite.v1"])  # type: ignore[list-item]
        ws.send(payload)
        with pytest.raises((ConnectionClosed, TimeoutError)):
            ws.recv(timeout=3)
            ws.recv(timeout=3)
        ws.close()
    client, _, _ = pair_independent(bridge)
    assert client.request("sys.ping").result["pong"]


def test_graceful_shutdown_ends_commands(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    b = BridgeProcess(ws, tmp_path / "state")
    client, _, _ = pair_independent(b)
    client.send_plain(
        json.dumps(
            {
                "id": 1,
                "op": "exec.run",
                "args": {"command": "trap '' TERM; sleep 300 & echo $!; wait"},
            }
        ).encode()
    )
    pid = int(json.loads(client.recv_plain())["data"].strip())
    assert b.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        res = kite(
            "serve",
            "--port",
            str(port),
            "--workspace",
            str(tmp_path),
            state_dir=tmp_path / "s",
            check=False,
        )
    finally:
        sock.close()
    assert res.returncode == 1
    assert "already in use" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_missing_workspace_is_a_clear_error(tmp_path: Path) -> None:
    res = kite(
        "serve", "--workspace", str(tmp_path / "nope"), state_dir=tmp_path / "s", check=False
    )
    assert res.returncode == 1 and "does not exist" in res.stderr


def test_unread_chunks_do_not_stall_the_connection(bridge: BridgeProcess) -> None:
    """A client streaming chunks at an op that never reads them still gets served."""
    from agent_core.rpc.frames import encode_chunk

    client, _, _ = pair_independent(bridge)
    client.send_plain(
        json.dumps({"id": 1, "op": "exec.run", "args": {"argv": ["sleep", "0.5"]}}).encode()
    )
    for seq in range(200):  # far more than the per-request queue holds
        client.send_plain(encode_chunk(1, seq, b"x" * 1000, final=False))
    client.next_id = 2
    reply = client.request("sys.ping", timeout=15)
    assert reply.result and reply.result["pong"] is True


# -- the bridge handles messages in websockets' receive callback (push mode) ----------------


def test_pipelined_requests_and_a_fragmented_message_are_answered_in_order(
    bridge: BridgeProcess,
) -> None:
    client, _, _ = pair_independent(bridge)
    (bridge.workspace / "p.txt").write_text("pipelined\n")
    # Many requests written before any reply is read: some arrive while an earlier one is still
    # being handled, queue behind it and are answered in order.
    n = 200
    for i in range(1, n + 1):
        op = {"id": i, "op": "fs.read", "args": {"path": "p.txt"}} if i % 2 else None
        op = op or {"id": i, "op": "sys.ping", "args": {}}
        client.send_plain(json.dumps(op).encode())
    got = [json.loads(client.recv_plain()) for _ in range(n)]
    assert [g["id"] for g in got] == list(range(1, n + 1))
    assert all(g["ok"] for g in got)
    assert got[0]["result"]["content"] == "pipelined\n"
    # One Noise message split over WebSocket continuation frames is still one message.
    frame = client.noise.encrypt(b'{"id":999,"op":"sys.ping","args":{}}')
    client.ws.send([frame[:7], frame[7:20], frame[20:]])
    reply = json.loads(client.recv_plain())
    assert reply["id"] == 999 and reply["ok"] is True


def test_text_frame_after_the_handshake_closes(bridge: BridgeProcess) -> None:
    client, _, _ = pair_independent(bridge)
    client.send_plain(b'{"id":1,"op":"sys.ping","args":{}}')
    assert json.loads(client.recv_plain())["ok"] is True
    client.ws.send("hello")
    with pytest.raises(ConnectionClosed) as exc:
        client.ws.recv(timeout=5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008
