"""The bridge: one port for the web app (HTTP) and the `/kite/v1` WebSocket endpoint.

`Bridge` wires the host-side parts together (host key, device registry, workspace jail, policy,
snapshots, audit log) and runs the `websockets` server. Everything a client can do goes through
`bridge.connection.Connection` after the pre-upgrade checks in `process_request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from agent_core import __version__
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.pairing import make_link
from agent_core.rpc.frames import MAX_PLAINTEXT
from agent_core.runtime import use_native_json
from bridge import statedir
from bridge.audit import AuditLog
from bridge.connection import Connection, PushServerConnection
from bridge.devices import DEFAULT_PAIR_TTL_S, Registry
from bridge.httpcheck import FailureLimiter, OriginPolicy
from bridge.jail import Workspace
from bridge.ops import exec as exec_ops
from bridge.ops import fs as _fs_ops  # noqa: F401  (registers the fs.* ops)
from bridge.ops import model as _model_ops  # noqa: F401
from bridge.ops import plugins as _plugin_ops  # noqa: F401  (registers plugin.*)
from bridge.ops import session as _session_ops  # noqa: F401  (registers session.*)
from bridge.ops import sys as _sys_ops  # noqa: F401  (registers sys.*)
from bridge.policy import Policy, load_policy
from bridge.sessions import SessionStore
from bridge.snapshots import SnapshotStore
from bridge.webapp import serve_static, text_response

log = logging.getLogger("kite.bridge")

ENDPOINT = "/kite/v1"
SUBPROTOCOLS = (SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR)
NOISE_MAX_MESSAGE = MAX_PLAINTEXT + 16


@dataclass
class BridgeConfig:
    workspace: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    connect_src: list[str] = field(default_factory=list)  # extra origins the web app may reach
    web_dir: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    user_config_dir: Path | None = None
    max_connections: int = 64
    max_inflight: int = 32
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 900.0
    ping_interval_s: float = 20.0
    revocation_poll_s: float = 0.25
    pair_failures_per_peer: int = 5
    pair_failures_overall: int = 30


class Bridge:
    def __init__(self, config: BridgeConfig, policy: Policy | None = None) -> None:
        self.config = config
        use_native_json()  # orjson for envelopes: a fifth less work per small request
        self.state_dir = statedir.ensure_state_dir(config.state_dir)
        self.backend = CpythonCryptoBackend()
        self.host_keypair = self.backend.keypair_from_private_bytes(
            statedir.load_or_create_host_key(self.state_dir)
        )
        self.registry = Registry(self.state_dir)
        self.policy = policy or load_policy(config.workspace, config.user_config_dir)
        self.workspace = Workspace(config.workspace, self.policy)
        self.snapshots = SnapshotStore(self.state_dir, self.workspace.root)
        self.audit = AuditLog(self.state_dir / "audit.log")
        self.sessions = SessionStore(self.state_dir)
        self.host_plugins = self._load_host_plugins()
        self.live_connections: set[Connection] = set()
        self._pair_limiter = FailureLimiter(
            config.pair_failures_per_peer, config.pair_failures_overall
        )
        self._connect_limiter = FailureLimiter(
            config.pair_failures_per_peer * 4, config.pair_failures_overall * 4
        )
        self._server: Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.origin_policy: OriginPolicy | None = None
        self.port = config.port

    def _load_host_plugins(self) -> dict[str, Any]:
        """Installed plugins whose manifests ask to run on the host (`plugin.call`)."""
        from bridge.cli_plugin import load_installed

        try:
            plugins, errors = load_installed(self.workspace.root, self.state_dir)
        except Exception as exc:  # a broken plugin config must not keep the bridge down
            log.warning("plugins not loaded: %s", exc)
            return {}
        for err in errors:
            log.warning("plugin refused: %s", err)
        return {p.name: p for p in plugins if p.manifest.run_on == "host"}

    @property
    def host_public_key(self) -> bytes:
        return self.host_keypair.public

    @property
    def base_url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/"

    def new_pairing_link(self, ttl_s: float = DEFAULT_PAIR_TTL_S) -> tuple[str, float]:
        secret, expires = self.registry.new_pairing_secret(ttl_s)
        return make_link(self.base_url, secret, self.host_public_key), expires

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        ssl_ctx = None
        if self.config.tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        exec_ops.enable_subreaper()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=self._process_request,
            compression=None,  # ciphertext does not compress; deflate only costs CPU
            max_size=NOISE_MAX_MESSAGE,
            max_queue=32,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_interval_s,
            open_timeout=self.config.handshake_timeout_s,
            close_timeout=2,
            create_connection=PushServerConnection,  # handles requests as they arrive
            server_header=f"kite-bridge/{__version__}",
            ssl=ssl_ctx,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        self.origin_policy = OriginPolicy(
            bind_host=self.config.host,
            port=self.port,
            tls=ssl_ctx is not None,
            extra_hosts=self.config.allowed_hosts,
            extra_origins=self.config.allowed_origins,
        )
        self._watcher = asyncio.get_running_loop().create_task(self._watch_revocations())
        statedir.write_runtime_info(
            self.state_dir,
            {
                "pid": os.getpid(),
                "url": self.base_url,
                "workspace": str(self.workspace.root),
                "version": __version__,
                "started_at": time.time(),
            },
        )

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, end running commands, close every connection."""
        if self._watcher:
            self._watcher.cancel()
        if self._server is not None:
            self._server.close(close_connections=False)
        await asyncio.gather(
            *(c.close(1001, "bridge shutting down") for c in list(self.live_connections)),
            return_exceptions=True,
        )
        await exec_ops.kill_all_running()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        statedir.clear_runtime_info(self.state_dir)
        self.registry.close()

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- HTTP, before any upgrade --------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        policy = self.origin_policy
        assert policy is not None
        headers = request.headers
        if not policy.host_ok(headers.get("Host")):
            return text_response(403, "forbidden: unknown Host (DNS rebinding defence)\n")
        path = request.path.split("?", 1)[0]
        upgrade = "websocket" in headers.get("Upgrade", "").lower()
        if path != ENDPOINT:
            if upgrade:
                return text_response(404, f"the WebSocket endpoint is {ENDPOINT}\n")
            return serve_static(
                self.config.web_dir,
                request.path,
                self.workspace.root.name,
                headers,
                tuple(self.config.connect_src),
            )
        if not upgrade:
            return text_response(400, "this endpoint speaks WebSocket only\n")
        if not policy.origin_ok(headers.get("Origin")):
            # Worth a line: a page on another origin tried to use this bridge.
            self.audit.record(
                {
                    "op": "upgrade",
                    "peer": _peer(conn),
                    "origin": headers.get("Origin"),
                    "outcome": "EACCES: origin not allowed",
                }
            )
            return text_response(403, "forbidden: cross-origin request\n")
        offered = [
            p.strip()
            for value in headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",")
        ]
        ours = [p for p in offered if p in SUBPROTOCOLS]
        if len(ours) != 1:
            return text_response(400, "offer exactly one subprotocol: kite.v1 or kite.v1.pair\n")
        if len(self.live_connections) >= self.config.max_connections:
            return text_response(503, "too many connections\n")
        peer = conn.remote_address[0] if conn.remote_address else "?"
        limiter = self._pair_limiter if ours[0] == SUBPROTOCOL_PAIR else self._connect_limiter
        if limiter.blocked(peer):
            return text_response(429, "too many failed attempts; wait a minute\n")
        return None

    def note_handshake_failure(self, peer: str, mode: str) -> None:
        (self._pair_limiter if mode == SUBPROTOCOL_PAIR else self._connect_limiter).note_failure(
            peer
        )

    async def _handle(self, ws: ServerConnection) -> None:
        await Connection(self, ws).run()

    # -- revocation ----------------------------------------------------------------------

    async def _watch_revocations(self) -> None:
        """`kite devices revoke` may run in another process: poll SQLite's data_version."""
        version = self.registry.data_version()
        while True:
            await asyncio.sleep(self.config.revocation_poll_s)
            try:
                now = self.registry.data_version()
                if now == version:
                    continue
                version = now
                revoked = self.registry.revoked_ids()
            except Exception:
                log.exception("revocation poll failed")
                continue
            for conn in list(self.live_connections):
                if conn.device is not None and conn.device.id in revoked:
                    log.info("device %s revoked: closing its connection", conn.device.id)
                    await conn.close(1008, "device revoked")

    # -- audit ---------------------------------------------------------------------------

    def audit_event(
        self, *, op: str, device: str | None, peer: str, outcome: str, t0: float
    ) -> None:
        self.audit.record(
            {
                "device": device,
                "peer": peer,
                "op": op,
                "outcome": outcome,
                "duration_ms": round((time.monotonic() - t0) * 1000, 3),
            }
        )

    def audit_op(
        self, conn: Connection, op: str, req_id: int, extra: dict[str, Any], outcome: str, t0: float
    ) -> None:
        entry: dict[str, Any] = {
            "device": conn.device.id if conn.device else None,
            "op": op,
            "id": req_id,
            **extra,
            "outcome": outcome,
            "duration_ms": round((time.monotonic() - t0) * 1000, 3),
        }
        self.audit.record(entry)


def _peer(conn: ServerConnection) -> str:
    """The peer's address, as `Connection.peer` gives it."""
    addr = conn.remote_address
    return str(addr[0]) if addr else "?"
