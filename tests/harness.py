"""Shared test harness: a real bridge in a subprocess, the `kite` CLI, and an independent client.

The independent client uses the `noiseprotocol` package and the `websockets` library only, and
follows DESIGN.md's wire protocol; it shares no code with agent_core's channel or RPC.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from noise.connection import Keypair, NoiseConnection
from websockets.sync.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent


def kite(
    *args: str, state_dir: Path, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the real `kite` CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        cwd=REPO,
    )


class BridgeProcess:
    """`kite serve --json --port 0` in a subprocess, on loopback."""

    def __init__(
        self, workspace: Path, state_dir: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        """`env`: variables set (over this process's environment) for the bridge process."""
        self.workspace = workspace
        self.state_dir = state_dir
        proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge",
                "serve",
                "--json",
                "--no-pair",
                "--port",
                "0",
                "--workspace",
                str(workspace),
                "--state-dir",
                str(state_dir),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=proc_env,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"bridge did not start: {err}")
        self.info = json.loads(line)
        self.url: str = self.info["url"]
        self.port = urlsplit(self.url).port
        self.ws_url = f"ws://127.0.0.1:{self.port}/kite/v1"

    def pair_url(self) -> str:
        return json.loads(kite("pair", "--json", state_dir=self.state_dir).stdout)["url"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()

    def alive(self) -> bool:
        return self.proc.poll() is None


class Drained(BridgeProcess):
    """A bridge whose stderr is read in a thread, so a long module run never fills the pipe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[str] = []
        stream = self.proc.stderr

        def drain() -> None:
            assert stream is not None
            for line in iter(stream.readline, ""):
                self.log.append(line)

        threading.Thread(target=drain, daemon=True).start()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_pair_url(url: str) -> tuple[bytes, bytes]:
    frag = parse_qs(urlsplit(url).fragment)
    return b64d(frag["pair"][0]), b64d(frag["host"][0])


@dataclass
class Reply:
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    events: list[tuple[str, Any]]


class IndependentClient:
    """A Kite client from DESIGN.md alone: noiseprotocol for Noise, websockets for transport."""

    def __init__(self, ws: ClientConnection, noise: NoiseConnection, server_info: dict[str, Any]):
        self.ws = ws
        self.noise = noise
        self.server_info = server_info
        self.next_id = 1

    @staticmethod
    def new_static_key() -> bytes:
        return os.urandom(32)

    @classmethod
    def handshake(
        cls,
        ws_url: str,
        *,
        static_private: bytes,
        host_key: bytes,
        psk: bytes | None = None,
        name: str = "test device",
        origin: str | None = None,
        **connect_kwargs: Any,
    ) -> IndependentClient:
        pairing = psk is not None
        name_ = b"Noise_XXpsk3_25519_AESGCM_SHA256" if pairing else b"Noise_XX_25519_AESGCM_SHA256"
        noise = NoiseConnection.from_name(name_)
        noise.set_as_initiator()
        noise.set_prologue(b"kite.v1.pair" if pairing else b"kite.v1")
        noise.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
        if pairing:
            noise.set_psks(psk=psk)
        noise.start_handshake()
        ws = connect(
            ws_url,
            subprotocols=["kite.v1.pair" if pairing else "kite.v1"],  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            max_size=None,
            compression=None,
            **connect_kwargs,
        )
        ws.send(bytes(noise.write_message(b"")))
        msg2 = ws.recv(timeout=10)
        assert isinstance(msg2, bytes)
        server_payload = json.loads(bytes(noise.read_message(msg2)))
        remote = noise.noise_protocol.handshake_state.rs.public_bytes
        if remote != host_key:
            ws.close()
            raise PermissionError("host key mismatch")
        ws.send(bytes(noise.write_message(json.dumps({"name": name}).encode())))
        return cls(ws, noise, server_payload)

    def send_plain(self, plaintext: bytes) -> None:
        self.ws.send(self.noise.encrypt(plaintext))

    def recv_plain(self, timeout: float = 10) -> bytes:
        frame = self.ws.recv(timeout=timeout)
        assert isinstance(frame, bytes)
        return bytes(self.noise.decrypt(frame))

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30) -> Reply:
        rid = self.next_id
        self.next_id += 1
        self.send_plain(json.dumps({"id": rid, "op": op, "args": args or {}}).encode())
        events: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.recv_plain(max(0.1, deadline - time.monotonic())))
            if msg.get("id") != rid:
                continue
            if "event" in msg:
                events.append((msg["event"], msg.get("data")))
                continue
            if msg["ok"]:
                return Reply(msg["result"], None, events)
            return Reply(None, msg["error"], events)

    def close(self) -> None:
        self.ws.close()


def pair_independent(
    bridge: BridgeProcess, name: str = "test device"
) -> tuple[IndependentClient, bytes, bytes]:
    """Pair a fresh key through `kite pair --json`; return the client, its key and the host key."""
    secret, host_key = parse_pair_url(bridge.pair_url())
    static = IndependentClient.new_static_key()
    client = IndependentClient.handshake(
        bridge.ws_url, static_private=static, host_key=host_key, psk=secret, name=name
    )
    return client, static, host_key


def self_signed_cert(dir_: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem in `dir_`), its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kite test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir_ / "cert.pem", dir_ / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def register_device(state_dir: Path, name: str) -> tuple[bytes, bytes]:
    """Register a new device key directly in the state dir's registry, as an admin (or
    `kite run` for its own key) would; return (device private key, host public key)."""
    from agent_core.channel.crypto_cpython import CpythonCryptoBackend
    from bridge import statedir
    from bridge.devices import Registry

    backend = CpythonCryptoBackend()
    device_private = os.urandom(32)
    host_key = backend.keypair_from_private_bytes(statedir.load_or_create_host_key(state_dir))
    reg = Registry(state_dir)
    try:
        reg.register(backend.keypair_from_private_bytes(device_private).public, name)
    finally:
        reg.close()
    return device_private, host_key.public
