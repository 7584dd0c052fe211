"""The security regression suite: every attack in docs/security.md, in one place.

Run it alone with `pytest tests/test_security.py`. Attacks already tested elsewhere are imported
from there (pytest collects them here too, with their fixtures); the rest are written here.
docs/security.md's table names, for each threat, the tests below. By threat:

- cross-site WebSocket hijacking: test_cross_origin_upgrade_is_403
- DNS rebinding: test_foreign_host_is_403
- LAN sniffing / active MITM: test_lan_sniffer_sees_only_ciphertext,
  test_wrong_host_key_client_aborts, test_wrong_host_key_aborts_before_identifying
- TLS-terminating proxy or tunnel: test_lan_sniffer_sees_only_ciphertext,
  test_proxy_cannot_impersonate_the_bridge
- tampering, replay, reordering: test_tampered_frame_closes, test_replayed_frame_closes,
  test_reordered_frames_close, test_recorded_handshake_replay_is_refused, test_altered_*
- unauthenticated peers probing: test_unregistered_key_is_refused,
  test_bridge_survives_garbage_handshakes, test_random_first_messages,
  test_random_third_messages, test_text_frame_and_stray_plaintext_close
- pairing secret theft or guessing: test_pairing_secret_reuse_expiry_and_wrong,
  test_pairing_failures_are_rate_limited
- stolen device: test_revoked_device_refused_and_live_connection_closed,
  test_revocation_fails_pending_calls
- prompt-injected or confused agent: test_prompt_injected_agent_is_bounded_by_host_policy,
  test_deny_globs_over_the_wire, test_read_only_host_refuses_every_change,
  test_secrets_never_reach_commands_over_the_wire
- workspace escapes: test_jail_escapes_over_the_wire, test_open_refuses_escapes,
  test_hard_link_refused_for_read_and_write, test_property_never_outside
- loosening the policy from inside: test_policy_file_cannot_be_changed_by_the_client,
  test_workspace_file_can_only_tighten, test_policy_file_is_read_denied_and_never_writable
- runaway commands: test_cancel_kills_command, test_disconnect_kills_command,
  test_graceful_shutdown_ends_commands (and tests/test_faults.py: kill -9 of the bridge)
- resource exhaustion: test_oversized_frame_closes, test_connection_limit_is_503,
  test_inflight_limit_is_ebusy
- malformed requests: test_malformed_json_and_unknown_op, test_random_frames_never_crash,
  test_mutated_envelopes_never_crash, test_lone_surrogate*, test_deeply_nested_json_*
- API key theft by the device: test_a_rejected_key_echoed_by_the_provider_is_redacted,
  test_op_contract_and_refusals, test_redactor_on_any_split,
  test_secrets_never_reach_commands_over_the_wire
- crash mid-write: test_kill_9_during_writes_never_tears
- host key theft: test_host_key_is_private_and_a_readable_one_is_refused
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.harness import (
    BridgeProcess,
    IndependentClient,
    kite,
    pair_independent,
    parse_pair_url,
    register_device,
)

# Imported: attacks tested where their feature lives.
from tests.test_bridge_e2e import (  # noqa: F401
    bridge,
    test_bridge_survives_garbage_handshakes,
    test_cancel_kills_command,
    test_cross_origin_upgrade_is_403,
    test_disconnect_kills_command,
    test_foreign_host_is_403,
    test_graceful_shutdown_ends_commands,
    test_jail_escapes_over_the_wire,
    test_malformed_json_and_unknown_op,
    test_oversized_frame_closes,
    test_pairing_failures_are_rate_limited,
    test_pairing_secret_reuse_expiry_and_wrong,
    test_reordered_frames_close,
    test_replayed_frame_closes,
    test_revoked_device_refused_and_live_connection_closed,
    test_tampered_frame_closes,
    test_unregistered_key_is_refused,
    test_wrong_host_key_client_aborts,
)
from tests.test_bridge_fuzz import (  # noqa: F401
    test_random_first_messages,
    test_random_third_messages,
)
from tests.test_client import (  # noqa: F401
    test_revocation_fails_pending_calls,
    test_wrong_host_key_aborts_before_identifying,
)
from tests.test_crash import test_kill_9_during_writes_never_tears  # noqa: F401
from tests.test_frames import (  # noqa: F401
    test_mutated_envelopes_never_crash,
    test_random_frames_never_crash,
)
from tests.test_jail import (  # noqa: F401
    jail,
    prop_jail,
    test_hard_link_refused_for_read_and_write,
    test_open_refuses_escapes,
    test_policy_file_is_read_denied_and_never_writable,
    test_property_never_outside,
)
from tests.test_model_relay import (  # noqa: F401
    setup,
    test_a_rejected_key_echoed_by_the_provider_is_redacted,
    test_op_contract_and_refusals,
    test_redactor_on_any_split,
)
from tests.test_noise_properties import (  # noqa: F401
    test_altered_handshake_message_never_completes,
    test_altered_transport_message_is_refused,
)
from tests.test_policy import dirs, test_workspace_file_can_only_tighten  # noqa: F401


@pytest.fixture(autouse=True)
def _once_per_session(request: pytest.FixtureRequest) -> None:
    """An imported test runs here only when its own module is not part of this session, so
    `pytest tests/test_security.py` runs the whole suite and a full run runs each test once."""
    home = request.node.function.__module__
    if home == __name__:
        return
    home_file = home.replace(".", "/") + ".py"
    if any(str(item.path).endswith(home_file) for item in request.session.items):
        pytest.skip(f"runs in {home_file} in this session")


CANARY_FILE = "CANARY-file-3f9a1c"
CANARY_WRITE = "CANARY-written-77d2e0"
CANARY_EXEC = "CANARY-exec-5b11c4"
SECRET_ENV = {
    "OPENAI_API_KEY": "sk-CANARY-openai-0123456789",
    "ANTHROPIC_API_KEY": "sk-ant-CANARY-0123456789",
    "GITHUB_TOKEN": "ghp_CANARY_token_0123456789",
    "AWS_SECRET_ACCESS_KEY": "CANARY-aws-0123456789",
    "MY_DB_PASSWORD": "CANARY-password-0123456789",
    "SECURITY_SUITE_HARMLESS": "visible-value",
}
DENIED_FILES = {
    ".env": "DENIED-CANARY env",
    ".env.local": "DENIED-CANARY env local",
    "id_rsa": "DENIED-CANARY private key",
    ".ssh/config": "DENIED-CANARY ssh",
    ".aws/credentials": "DENIED-CANARY aws",
    "secrets/token.txt": "DENIED-CANARY workspace deny glob",
}
WORKSPACE_POLICY = '[policy]\ndeny = ["secrets/**"]\n'


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """One bridge for the checks that need no fresh one: secrets in its environment, denied
    files and a workspace policy in its workspace."""
    root = tmp_path_factory.mktemp("sec")
    ws = root / "ws"
    (ws / ".kite").mkdir(parents=True)
    (ws / ".kite" / "bridge.toml").write_text(WORKSPACE_POLICY)
    (ws / "public.txt").write_text(CANARY_FILE + "\n")
    for name, text in DENIED_FILES.items():
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_text(text + "\n")
    b = BridgeProcess(ws, root / "state", env=SECRET_ENV)
    try:
        yield b
    finally:
        b.stop()


# -- LAN sniffing, proxies: what the network sees -------------------------------------------------


class RecordingProxy:
    """A TCP relay on loopback that keeps every byte it forwards (a sniffer on the path)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = bytearray()  # client -> bridge
        self.down = bytearray()  # bridge -> client
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for src, dst, buf in ((client, upstream, self.up), (upstream, client, self.down)):
                threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    buf += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_lan_sniffer_sees_only_ciphertext(sec: BridgeProcess) -> None:
    proxy = RecordingProxy(sec.port)
    try:
        secret, host_key = parse_pair_url(sec.pair_url())
        static = IndependentClient.new_static_key()
        via = f"ws://127.0.0.1:{proxy.port}/kite/v1"
        c = IndependentClient.handshake(
            via, static_private=static, host_key=host_key, psk=secret, name="sniffed-device"
        )
        read = c.request("fs.read", {"path": "public.txt"})
        assert read.result and CANARY_FILE in read.result["content"]
        assert c.request("fs.write", {"path": "note.txt", "content": CANARY_WRITE}).result
        ran = c.request("exec.run", {"argv": ["echo", CANARY_EXEC]})
        assert CANARY_EXEC in "".join(d for e, d in ran.events if e == "stdout")
        c.close()
        time.sleep(0.2)
    finally:
        proxy.close()
    # After the HTTP upgrade (plaintext, and carrying nothing of the session), only Noise.
    head, _, up = bytes(proxy.up).partition(b"\r\n\r\n")
    _, _, down = bytes(proxy.down).partition(b"\r\n\r\n")
    assert head.startswith(b"GET /kite/v1 HTTP/1.1")
    wire = up + down
    assert len(proxy.up) > 100 and len(proxy.down) > 100
    device_public = _public_of(static)
    for needle in (
        CANARY_FILE.encode(),
        CANARY_WRITE.encode(),
        CANARY_EXEC.encode(),
        b"public.txt",
        b"fs.read",
        b"exec.run",
        b"sniffed-device",
        b"kite-bridge",  # the server's handshake payload is encrypted too
        secret,  # the pairing secret never travels
        base64.urlsafe_b64encode(secret).rstrip(b"="),
        device_public,  # XX hides both static keys from a passive observer
        host_key,
    ):
        assert needle not in wire, needle


def _public_of(private: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def test_proxy_cannot_impersonate_the_bridge(tmp_path: Path) -> None:
    """A proxy that terminates the connection and answers with its own key (as a TLS proxy
    could) is refused by the client before the device reveals who it is."""
    real_ws = tmp_path / "real"
    real_ws.mkdir()
    fake_ws = tmp_path / "fake"
    fake_ws.mkdir()
    real = BridgeProcess(real_ws, tmp_path / "real-state")
    impostor = BridgeProcess(fake_ws, tmp_path / "fake-state")  # another key: the "proxy"
    try:
        secret, host_key = parse_pair_url(real.pair_url())
        with pytest.raises(PermissionError):
            IndependentClient.handshake(
                impostor.ws_url, static_private=os.urandom(32), host_key=host_key, psk=secret
            )
        # The real bridge still accepts the unused secret afterwards.
        c = IndependentClient.handshake(
            real.ws_url, static_private=os.urandom(32), host_key=host_key, psk=secret
        )
        assert c.request("sys.ping").result["pong"] is True
        c.close()
        devices = json.loads(
            kite("devices", "list", "--json", state_dir=tmp_path / "fake-state").stdout
        )
        assert devices == []
    finally:
        real.stop()
        impostor.stop()


# -- replay of a recorded handshake; stray frames --------------------------------------------------


def test_recorded_handshake_replay_is_refused(sec: BridgeProcess) -> None:
    from noise.connection import Keypair, NoiseConnection

    c, static, _ = pair_independent(sec, name="replayed")
    c.close()
    # Record a genuine XX handshake of the registered device...
    noise = NoiseConnection.from_name(b"Noise_XX_25519_AESGCM_SHA256")
    noise.set_as_initiator()
    noise.set_prologue(b"kite.v1")
    noise.set_keypair_from_private_bytes(Keypair.STATIC, static)
    noise.start_handshake()
    ws = connect(sec.ws_url, subprotocols=["kite.v1"])  # type: ignore[list-item]
    m1 = bytes(noise.write_message(b""))
    ws.send(m1)
    noise.read_message(ws.recv(timeout=10))
    m3 = bytes(noise.write_message(b"{}"))
    ws.send(m3)
    ws.close()
    # ...and replay it on a new connection: the bridge's new ephemeral key makes it worthless.
    ws = connect(sec.ws_url, subprotocols=["kite.v1"])  # type: ignore[list-item]
    ws.send(m1)
    ws.recv(timeout=10)  # a fresh message 2
    ws.send(m3)
    with pytest.raises(ConnectionClosed) as exc:
        ws.recv(timeout=10)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008
    assert exc.value.rcvd.reason == ""


def test_text_frame_and_stray_plaintext_close(sec: BridgeProcess) -> None:
    c, _, _ = pair_independent(sec, name="stray")
    c.ws.send("a text frame")
    with pytest.raises(ConnectionClosed) as exc:
        c.ws.recv(timeout=10)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008
    c, _, _ = pair_independent(sec, name="stray2")
    c.send_plain(b"\x01neither an envelope nor a chunk")
    with pytest.raises(ConnectionClosed) as exc:
        c.ws.recv(timeout=10)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008


# -- resource limits ----------------------------------------------------------------------------


def test_connection_limit_is_503(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    b = BridgeProcess(tmp_path / "ws", tmp_path / "state", "--max-connections", "2")
    try:
        c1, static, host_key = pair_independent(b)
        c2 = IndependentClient.handshake(b.ws_url, static_private=static, host_key=host_key)
        with pytest.raises(InvalidStatus) as exc:
            IndependentClient.handshake(b.ws_url, static_private=static, host_key=host_key)
        assert exc.value.response.status_code == 503
        c1.close()
        deadline = time.monotonic() + 10
        while True:  # the slot frees once the bridge has seen the close
            try:
                c3 = IndependentClient.handshake(b.ws_url, static_private=static, host_key=host_key)
                break
            except InvalidStatus:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert c3.request("sys.ping").result["pong"] is True
        c2.close()
        c3.close()
    finally:
        b.stop()


def test_inflight_limit_is_ebusy(sec: BridgeProcess) -> None:
    c, _, _ = pair_independent(sec, name="busy")
    for rid in range(1, 33):
        c.send_plain(
            json.dumps({"id": rid, "op": "exec.run", "args": {"argv": ["sleep", "30"]}}).encode()
        )
    c.next_id = 100
    busy = c.request("sys.ping")
    assert busy.error and busy.error["code"] == "EBUSY", busy
    for rid in range(1, 33):
        c.send_plain(
            json.dumps({"id": 200 + rid, "op": "cancel", "args": {"target": rid}}).encode()
        )
    ended = set()
    deadline = time.monotonic() + 30
    while len(ended) < 32 and time.monotonic() < deadline:
        msg = json.loads(c.recv_plain(timeout=30))
        if msg.get("id") in range(1, 33) and "ok" in msg:
            assert msg["error"]["code"] == "ECANCELED"
            ended.add(msg["id"])
    assert len(ended) == 32
    assert c.request("sys.ping").result["pong"] is True  # the slots are free again
    c.close()


# -- host policy: deny globs, secrets, the policy file, read-only --------------------------------


def test_deny_globs_over_the_wire(sec: BridgeProcess) -> None:
    c, _, _ = pair_independent(sec, name="deny")
    for path, text in DENIED_FILES.items():
        for op, args in (
            ("fs.read", {"path": path}),
            ("fs.read", {"path": path, "binary": True}),
            ("fs.write", {"path": path, "content": "overwritten"}),
            ("fs.stat", {"path": path}),
            ("fs.delete", {"path": path}),
            ("fs.move", {"from": path, "to": "moved.txt"}),
            ("fs.move", {"from": "public.txt", "to": path}),
        ):
            r = c.request(op, args)
            assert r.error and r.error["code"] == "EACCES", (op, args, r)
        assert (sec.workspace / path).read_text() == text + "\n"
    grep = c.request("fs.grep", {"pattern": "DENIED-CANARY", "path": "."})
    assert grep.result is not None and grep.result["matches"] == []
    glob = c.request("fs.glob", {"pattern": "**/*"})
    listed = set(glob.result["paths"])
    assert listed.isdisjoint(DENIED_FILES), listed & set(DENIED_FILES)
    # A denied name is refused whether or not it exists.
    r = c.request("fs.write", {"path": "sub/.env.production", "content": "x"})
    assert r.error and r.error["code"] == "EACCES"
    assert not (sec.workspace / "sub" / ".env.production").exists()
    c.close()


def test_secrets_never_reach_commands_over_the_wire(sec: BridgeProcess) -> None:
    c, _, _ = pair_independent(sec, name="env")
    ran = c.request("exec.run", {"argv": ["env"]})
    out = "".join(d for e, d in ran.events if e == "stdout")
    assert ran.result and ran.result["exit_code"] == 0
    for name, value in SECRET_ENV.items():
        if name == "SECURITY_SUITE_HARMLESS":
            assert f"{name}={value}" in out
        else:
            assert value not in out and f"{name}=" not in out, name
    # Nor can the client put them back, nor set the cookie that tracks a command's processes.
    for name in ("OPENAI_API_KEY", "GITHUB_TOKEN", "KITE_EXEC_ID"):
        r = c.request("exec.run", {"argv": ["true"], "env": {name: "x"}})
        assert r.error and r.error["code"] == "EACCES", name
    info = c.request("model.info")
    assert "CANARY" not in json.dumps(info.result)
    c.close()


def test_policy_file_cannot_be_changed_by_the_client(sec: BridgeProcess) -> None:
    c, _, _ = pair_independent(sec, name="policy")
    loosen = "[policy]\nread_only = false\ndeny = []\n"
    for op, args in (
        ("fs.write", {"path": ".kite/bridge.toml", "content": loosen}),
        ("fs.write", {"path": "./.kite/../.kite/bridge.toml", "content": loosen}),
        ("fs.delete", {"path": ".kite/bridge.toml"}),
        ("fs.delete", {"path": ".kite", "recursive": True}),
        ("fs.move", {"from": ".kite", "to": "kite-moved"}),
        ("fs.move", {"from": "public.txt", "to": ".kite/bridge.toml", "overwrite": True}),
    ):
        r = c.request(op, args)
        assert r.error and r.error["code"] == "EACCES", (op, args, r)
    assert (sec.workspace / ".kite" / "bridge.toml").read_text() == WORKSPACE_POLICY
    ops = c.request("sys.info").result["ops"]
    assert not [op for op in ops if "policy" in op or "config" in op]
    c.close()


def test_nothing_under_dot_kite_can_be_written(sec: BridgeProcess) -> None:
    """.kite/ holds the policy file and the workspace's plugins (loaded on the host, possibly
    trusted by name): a client changes nothing in it, even with exec disabled."""
    c, _, _ = pair_independent(sec, name="dot-kite")
    (sec.workspace / ".kite").mkdir(exist_ok=True)
    (sec.workspace / "moved.txt").write_text("payload")
    try:
        for op, args in (
            ("fs.write", {"path": ".kite/plugins/evil/kite-plugin.json", "content": "{}"}),
            ("fs.write", {"path": ".kite/other.toml", "content": "x"}),
            ("fs.mkdir", {"path": ".kite/new"}),
            ("fs.mkdir", {"path": ".KITE/new"}),
            ("fs.move", {"from": "moved.txt", "to": ".kite/plugins/x.wasm"}),
            ("fs.delete", {"path": ".kite"}),
        ):
            r = c.request(op, args)
            assert r.error and r.error["code"] == "EACCES", (op, args, r)
    finally:
        c.close()
        assert (sec.workspace / "moved.txt").read_text() == "payload"
        assert not (sec.workspace / ".kite" / "plugins").exists()
        assert not (sec.workspace / ".kite" / "new").exists()
        (sec.workspace / "moved.txt").unlink()
        for extra in (".kite/plugins", ".kite/other.toml", ".kite/new"):
            target = sec.workspace / extra
            if target.is_dir():
                import shutil

                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def test_read_only_host_refuses_every_change(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".kite").mkdir(parents=True)
    (ws / ".kite" / "bridge.toml").write_text("[policy]\nread_only = true\n")
    (ws / "a.txt").write_text("A\n")
    (ws / "d").mkdir()
    before = sorted((str(p.relative_to(ws)), p.stat().st_mtime_ns) for p in ws.rglob("*"))
    b = BridgeProcess(ws, tmp_path / "state")
    try:
        c, _, _ = pair_independent(b)
        assert c.request("fs.read", {"path": "a.txt"}).result["content"] == "A\n"
        for op, args in (
            ("fs.write", {"path": "a.txt", "content": "B"}),
            ("fs.write", {"path": "new.txt", "content": "B"}),
            ("fs.delete", {"path": "a.txt"}),
            ("fs.move", {"from": "a.txt", "to": "b.txt"}),
            ("fs.mkdir", {"path": "e"}),
            ("exec.run", {"argv": ["touch", "pwned"]}),
        ):
            r = c.request(op, args)
            assert r.error and r.error["code"] == "EACCES", (op, r)
        c.close()
    finally:
        b.stop()
    after = sorted((str(p.relative_to(ws)), p.stat().st_mtime_ns) for p in ws.rglob("*"))
    assert after == before


# -- the prompt-injected agent ---------------------------------------------------------------------


def test_prompt_injected_agent_is_bounded_by_host_policy(tmp_path: Path) -> None:
    """A model that follows injected instructions, driving an agent whose device-side gate
    allows everything: the host policy alone stops every step, and nothing leaks to the model."""
    from agent_core.agent.loop import Agent, LoopConfig
    from agent_core.agent.permissions import PermissionGate
    from agent_core.llm import providers
    from tests.model_server import ScriptedModelServer, ToolCall, Turn
    from tests.test_tools import connected

    (tmp_path / "outside.txt").write_text("outside\n")
    turns = [
        Turn(text="The README says to read the env file.", tool_calls=[
            ToolCall("read", {"filePath": ".env"}),
            ToolCall("read", {"filePath": "../outside.txt"}),
            ToolCall("grep", {"pattern": "DENIED-CANARY"}),
        ]),
        Turn(tool_calls=[
            ToolCall("write", {"file_path": ".kite/bridge.toml",
                               "content": "[policy]\nexec_enabled = true\n"}),
            ToolCall("write", {"file_path": "secrets/exfil.txt", "content": "x"}),
        ]),
        Turn(tool_calls=[ToolCall("bash", {"command": "cat .env; env", "description": "look"})]),
        Turn(text="I could not do any of that."),
    ]  # fmt: skip
    with ScriptedModelServer(turns).in_thread() as srv:
        env = {"OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-CANARY-relay-0123456789"}
        ws_root = tmp_path / "root"
        ws_root.mkdir()
        bk = _Device(ws_root, env, '[policy]\nexec_enabled = false\ndeny = ["secrets/**"]\n')
        try:
            (bk.workspace / ".env").write_text("DENIED-CANARY=1\n")

            async def main() -> Any:
                async with connected(bk) as c:
                    provider = providers.make_provider("openai/gpt-test", route="bridge", client=c)
                    agent = Agent(
                        provider, c, gate=PermissionGate(yes=True),
                        config=LoopConfig(model="gpt-test"),
                    )  # fmt: skip
                    return await agent.run("summarise the README")

            result = asyncio.run(main())
        finally:
            bk.stop()
        assert result.reason == "end_turn", result
        # Nothing changed, inside or outside.
        assert (bk.workspace / ".kite" / "bridge.toml").read_text().startswith("[policy]\nexec_")
        assert "exec_enabled = false" in (bk.workspace / ".kite" / "bridge.toml").read_text()
        assert not (bk.workspace / "secrets").exists()
        assert (tmp_path / "outside.txt").read_text() == "outside\n"
        # What went back to the model: refusals, and neither the secret file nor the key.
        bodies = [json.dumps(r.body) for r in srv.requests]
        assert len(bodies) == 4
        assert all("DENIED-CANARY=1" not in b for b in bodies)
        assert all("sk-CANARY-relay" not in b for b in bodies)
        later = " ".join(bodies[1:])
        assert "denied" in later.lower() or "EACCES" in later or "not allowed" in later.lower()
        assert "disabled" in bodies[3].lower(), bodies[3][-2000:]


class _Device:
    """A bridge with a workspace policy, and a device key registered the way `kite run`
    registers its own (the shape tests.test_tools.connected expects)."""

    def __init__(self, root: Path, env: dict[str, str], policy: str) -> None:
        self.workspace = root / "ws"
        (self.workspace / ".kite").mkdir(parents=True)
        (self.workspace / ".kite" / "bridge.toml").write_text(policy)
        state = root / "state"
        self.proc = BridgeProcess(self.workspace, state, env=env)
        self.device_private, self.host_key = register_device(state, "agent")

    def stop(self) -> None:
        self.proc.stop()


# -- malformed input found while building this suite -----------------------------------------


def _fresh_session(sec: BridgeProcess, name: str) -> IndependentClient:
    c, _, _ = pair_independent(sec, name=name)
    return c


def test_lone_surrogates_in_argument_names_get_an_answer(sec: BridgeProcess) -> None:
    """`"\\ud800"` is valid JSON but no valid Unicode: the reply naming it must still be sent."""
    c = _fresh_session(sec, "surrogate")
    c.send_plain(b'{"id":1,"op":"exec.run","args":{"argv":["true"],"\\ud800":1}}')
    reply = json.loads(c.recv_plain(timeout=10))
    assert reply["id"] == 1 and reply["error"]["code"] == "EINVAL"
    assert c.request("sys.ping").result["pong"] is True
    c.close()


def test_lone_surrogate_in_an_op_name_is_eunsupported(sec: BridgeProcess) -> None:
    c = _fresh_session(sec, "surrogate-op")
    c.send_plain(b'{"id":1,"op":"fs.nope\\ud800","args":{}}')
    reply = json.loads(c.recv_plain(timeout=10))
    assert reply["error"]["code"] == "EUNSUPPORTED"
    assert c.request("sys.ping").result["pong"] is True
    c.close()


def test_deeply_nested_json_is_einval_and_the_session_continues(sec: BridgeProcess) -> None:
    c = _fresh_session(sec, "deep")
    c.send_plain(b'{"id":1,"op":"sys.ping","args":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}")
    reply = json.loads(c.recv_plain(timeout=10))
    assert reply["ok"] is False and reply["error"]["code"] == "EINVAL"
    assert c.request("sys.ping").result["pong"] is True
    c.close()


# -- host key theft --------------------------------------------------------------------------------


def test_host_key_is_private_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    state = tmp_path / "state"
    b = BridgeProcess(tmp_path / "ws", state)
    b.stop()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    key = state / "host_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for name in ("state.sqlite3", "audit.log"):
        if (state / name).exists():
            assert stat.S_IMODE((state / name).stat().st_mode) & 0o077 == 0, name
    key.chmod(0o644)
    res = kite(
        "serve", "--port", "0", "--workspace", str(tmp_path / "ws"), state_dir=state, check=False
    )
    assert res.returncode == 1
    assert "readable by others" in res.stderr and "chmod 600" in res.stderr
    with contextlib.suppress(Exception):
        key.chmod(0o600)
