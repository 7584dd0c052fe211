"""Faults against a real bridge process: what survives a `kill -9`, a vanished client, a network
that drops and returns, and a full disk. (A `kill -9` during writes: tests/test_crash.py.)

Every check is on real state: /proc for processes and file descriptors, SQLite's own integrity
check, the bytes on disk, a real tmpfs for ENOSPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import WebSocketException

from agent_core.agent.session import Session
from agent_core.agent.sync import MemoryCache, SessionSync, resume, sha256_hex, write_once
from agent_core.channel.crypto import KeyPair
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.client import ChannelClosed, KiteClient
from agent_core.llm.types import Message, TextPart
from agent_core.pairing import parse_link
from agent_core.rpc.errors import ENOSPC
from agent_core.rpc.frames import chunk_payload, encode_envelope
from agent_core.transport.ws_cpython import open_websocket
from bridge.sessions import DB_FILE
from tests.harness import REPO, BridgeProcess, IndependentClient, pair_independent

BACKEND = CpythonCryptoBackend()


# -- helpers ------------------------------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    """The process's state letter from /proc, None when it no longer exists."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def running(pid: int) -> bool:
    """Alive and not a zombie. (A killed orphan whose new parent, PID 1 of a container without
    an init, never reaps it stays a zombie: dead, holding nothing but its pid.)"""
    return proc_state(pid) not in (None, "Z", "X")


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def children_of(pid: int) -> set[int]:
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out.update(
                    int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                )
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_peers(pid: int) -> set[int]:
    """Local ports of the TCP connections of `pid`'s sockets that are ESTABLISHED (IPv4)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and f[9] in inodes:  # 01: ESTABLISHED
            ports.add(int(f[2].split(":")[1], 16))  # the remote (client) port
    return ports


def exec_request(rid: int, command: str) -> bytes:
    return json.dumps({"id": rid, "op": "exec.run", "args": {"command": command}}).encode()


def _numbers(out: str) -> list[int]:
    """The whole-line integers in `out`: the background loop's "tick"s may come first."""
    return [int(line) for line in out.split("\n")[:-1] if line.strip().isdigit()]


def read_pids(client: IndependentClient, n: int) -> list[int]:
    """The first `n` integers the command prints on stdout."""
    out = ""
    while len(_numbers(out)) < n:
        msg = json.loads(client.recv_plain(timeout=15))
        if msg.get("event") == "stdout":
            out += msg["data"]
    return _numbers(out)[:n]


async def connect_kite(port: int, static: KeyPair, host_key: bytes) -> KiteClient:
    transport = await open_websocket(f"ws://127.0.0.1:{port}/kite/v1", SUBPROTOCOL_CONNECT)
    return await KiteClient.handshake(
        transport, BACKEND, mode=SUBPROTOCOL_CONNECT, static=static, host_key=host_key
    )


async def pair_kite(bridge: BridgeProcess) -> tuple[KiteClient, KeyPair, bytes]:
    link = parse_link(bridge.pair_url())
    static = await BACKEND.generate_keypair()
    transport = await open_websocket(bridge.ws_url, SUBPROTOCOL_PAIR)
    client = await KiteClient.handshake(
        transport,
        BACKEND,
        mode=SUBPROTOCOL_PAIR,
        static=static,
        host_key=link.host_key,
        psk=link.secret,
        info={"name": "faults"},
    )
    return client, static, link.host_key


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    return d


# -- kill -9 of the bridge during a long command ----------------------------------------------

LONG_COMMAND = (
    # Ignores SIGTERM; a background child in its group; a child that left the session.
    "trap '' TERM; sleep 300 & echo $!; setsid sleep 300 & echo $!; echo $$; wait"
)


def test_kill_9_during_a_long_command_leaves_no_orphans(ws: Path, tmp_path: Path) -> None:
    bridge = BridgeProcess(ws, tmp_path / "state")
    try:
        client, static, host_key = pair_independent(bridge)
        client.send_plain(exec_request(1, LONG_COMMAND))
        pids = read_pids(client, 3)
        assert all(running(p) for p in pids)
        supervisors = children_of(bridge.proc.pid) - set(pids)
        assert len(supervisors) == 1, "the bridge runs exactly one supervisor"
    finally:
        bridge.stop(signal.SIGKILL)
    # The supervisor ends the whole tree (SIGTERM, the 2 s grace, SIGKILL), then exits itself.
    assert wait_until(lambda: not any(running(p) for p in pids), 20), [
        (p, proc_state(p)) for p in pids
    ]
    (sup,) = supervisors
    assert wait_until(lambda: not running(sup), 10)
    # After a restart the bridge serves the same device as before.
    again = BridgeProcess(ws, tmp_path / "state")
    try:
        c = IndependentClient.handshake(again.ws_url, static_private=static, host_key=host_key)
        ran = c.request("exec.run", {"argv": ["echo", "back"]})
        assert ran.result and ran.result["exit_code"] == 0
        c.close()
    finally:
        again.stop()


def test_commands_that_finished_are_forgotten_by_the_supervisor(ws: Path, tmp_path: Path) -> None:
    """A daemon a finished command left behind deliberately is not the supervisor's to kill."""
    bridge = BridgeProcess(ws, tmp_path / "state")
    try:
        client, _, _ = pair_independent(bridge)
        res = client.request(
            "exec.run", {"command": "setsid sh -c 'sleep 300 >/dev/null 2>&1 </dev/null & echo $!'"}
        )
        assert res.result and res.result["exit_code"] == 0
        (daemon,) = [int(x) for x in "".join(d for e, d in res.events if e == "stdout").split()]
    finally:
        bridge.stop(signal.SIGKILL)
    try:
        time.sleep(1.0)
        assert running(daemon)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGKILL)


# -- kill -9 during session appends -----------------------------------------------------------


def _msg(i: int) -> Message:
    return Message("user", [TextPart(f"{i} " + "x" * 30000)])  # type: ignore[arg-type]


def test_kill_9_during_session_appends_store_intact_history_resumes(
    ws: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    rng = random.Random(6)
    cache = MemoryCache()

    async def main() -> None:
        bridge = BridgeProcess(ws, state)
        client, static, host_key = await pair_kite(bridge)
        sync = SessionSync(client, Session(id="s1"), cache=cache)
        n = 0
        for _round in range(3):
            # A few acknowledged pushes, then one in flight when the bridge dies.
            for _ in range(3):
                sync.session.messages += [_msg(n), _msg(n + 1)]
                n += 2
                assert await sync.push()
            sync.session.messages += [_msg(n + i) for i in range(20)]  # 600 KB
            n += 20
            push = asyncio.ensure_future(sync.push())
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            bridge.stop(signal.SIGKILL)
            assert await push is False or sync.pending == 0
            await client.close()
            # The store is whole on disk: SQLite's own verdict, while no bridge holds it.
            db = sqlite3.connect(state / DB_FILE)
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            db.close()
            bridge = BridgeProcess(ws, state)
            client = await connect_kite(bridge.port, static, host_key)
            sync = await resume(client, "s1", cache=cache)
            assert await sync.push()
            stored = await client.call("session.get", {"id": "s1", "limit": 10_000})
            seqs = [m["seq"] for m in stored["messages"]]
            assert seqs == list(range(n))
            texts = [m["message"]["parts"][0]["text"] for m in stored["messages"]]
            assert texts == [f"{i} " + "x" * 30000 for i in range(n)]
        await client.close()
        bridge.stop()

    asyncio.run(main())


# -- a client that vanishes mid-stream --------------------------------------------------------

STREAMING = "trap '' TERM; (while :; do echo tick; sleep 0.01; done) & echo $!; echo $$; wait"

_VANISHING_CLIENT = r"""
import json, sys
from tests.harness import IndependentClient, b64d
static, host_key, url = b64d(sys.argv[1]), b64d(sys.argv[2]), sys.argv[3]
c = IndependentClient.handshake(url, static_private=static, host_key=host_key)
c.send_plain(json.dumps({"id": 1, "op": "exec.run", "args": {"command": sys.argv[4]}}).encode())
out = ""
def numbers():  # "tick"s from the background loop may come before the pids
    return [x for x in out.split("\n")[:-1] if x.strip().isdigit()]
while len(numbers()) < 2:
    out += json.loads(c.recv_plain())["data"]
print(" ".join(numbers()[:2]), flush=True)
sys.stdin.read()  # streamed output keeps arriving; killed here
"""


def _snapshot(pid: int) -> tuple[int, set[int], set[int]]:
    return fd_count(pid), children_of(pid), tcp_peers(pid)


@pytest.mark.parametrize("how", ["process_killed", "tcp_reset"])
def test_vanished_client_commands_killed_resources_freed(
    ws: Path, tmp_path: Path, how: str
) -> None:
    import base64

    bridge = BridgeProcess(ws, tmp_path / "state")
    try:
        client, static, host_key = pair_independent(bridge)
        # Warm up everything a connection and a command touch once (audit log, SQLite, ...).
        assert client.request("exec.run", {"argv": ["true"]}).result
        client.close()
        bpid = bridge.proc.pid
        assert wait_until(lambda: not tcp_peers(bpid), 10)
        fds0, kids0, _ = _snapshot(bpid)

        if how == "process_killed":
            enc = base64.urlsafe_b64encode
            proc = subprocess.Popen(
                [sys.executable, "-c", _VANISHING_CLIENT, enc(static).decode(),
                 enc(host_key).decode(), bridge.ws_url, STREAMING],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            assert proc.stdout is not None
            pids = [int(x) for x in proc.stdout.readline().split()]
            assert len(pids) == 2 and tcp_peers(bpid)
            proc.kill()  # the kernel closes its socket: the bridge sees the TCP connection end
            proc.wait(10)
            proc.stdout.close()
            assert proc.stdin is not None
            proc.stdin.close()
        else:
            c = IndependentClient.handshake(bridge.ws_url, static_private=static, host_key=host_key)
            c.send_plain(exec_request(1, STREAMING))
            pids = read_pids(c, 2)
            sock = c.ws.socket
            # SO_LINGER 0: close() sends RST, no FIN, no WebSocket close frame.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()
        assert wait_until(lambda: not any(running(p) for p in pids), 15)
        assert wait_until(lambda: not tcp_peers(bpid), 10)
        # Back to the bridge's resting state: no extra fds (pipes, sockets), no extra children.
        assert wait_until(lambda: _snapshot(bpid)[:2] == (fds0, kids0), 10), (
            _snapshot(bpid),
            (fds0, kids0),
        )
        # And it still serves.
        c2 = IndependentClient.handshake(bridge.ws_url, static_private=static, host_key=host_key)
        assert c2.request("sys.ping").result["pong"] is True
        c2.close()
    finally:
        bridge.stop()


# -- the network drops and returns -----------------------------------------------------------


class FlakyProxy:
    """A TCP proxy on loopback whose link can be black-holed (bytes to the client are held
    back), cut (every connection reset) and refused for a while, like a dropped Wi-Fi."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.blackhole = threading.Event()
        self.refuse = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse.is_set():
                _reset(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if to_client and self.blackhole.is_set():
                    continue  # lost on the way
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on
        except OSError:
            pass

    def cut(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _reset(s)

    def close(self) -> None:
        self._stop = True
        self.cut()
        self.listener.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Reconnecting:
    """What a device does: on a dropped channel, reconnect (with the registered key) and go on."""

    def __init__(self, connect: Callable[[], Awaitable[KiteClient]]) -> None:
        self._connect = connect
        self.client: KiteClient | None = None
        self.connects = 0

    async def get(self, deadline_s: float = 20) -> KiteClient:
        if self.client is not None and not self.client.closed:
            return self.client
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                self.client = await self._connect()
                self.connects += 1
                return self.client
            except (OSError, ChannelClosed, EOFError, WebSocketException) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError("could not reconnect") from exc
                await asyncio.sleep(0.1)

    async def call(self, op: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        return await (await self.get()).call(op, args, **kw)


def test_network_drop_and_return_resumes_and_applies_a_write_once(ws: Path, tmp_path: Path) -> None:
    (ws / "ledger.txt").write_text("start\n")

    async def main() -> None:
        bridge = BridgeProcess(ws, tmp_path / "state")
        proxy = FlakyProxy(bridge.port)
        direct, static, host_key = await pair_kite(bridge)  # an observer on its own link
        dev = Reconnecting(lambda: connect_kite(proxy.port, static, host_key))
        try:
            sync = SessionSync(await dev.get(), Session(id="net"), cache=MemoryCache())
            sync.session.messages += [_msg(0), _msg(1)]
            assert await sync.push()

            # 1. A session append lands, its reply is lost, the link drops.
            proxy.blackhole.set()
            sync.session.messages += [_msg(2), _msg(3)]
            push = asyncio.ensure_future(sync.push())

            async def appended() -> bool:
                got = await direct.call("session.get", {"id": "net", "limit": 100})
                return len(got["messages"]) == 4

            while not await appended():
                await asyncio.sleep(0.02)
            proxy.refuse.set()
            proxy.cut()
            assert await push is False  # the device does not know it landed
            proxy.blackhole.clear()
            asyncio.get_running_loop().call_later(0.5, proxy.refuse.clear)  # the network returns
            sync.client = await dev.get()
            assert await sync.push() and sync.pending == 0
            got = await direct.call("session.get", {"id": "net", "limit": 100})
            assert [m["seq"] for m in got["messages"]] == [0, 1, 2, 3]  # each exactly once

            # 2. An fs.write lands, its reply is lost, the link drops; write_once retries it.
            before = (ws / "ledger.txt").read_text()
            content = before + "record 1\n"
            proxy.blackhole.set()
            write = asyncio.ensure_future(
                write_once(dev, "ledger.txt", content, sha256_hex(before))
            )
            assert await asyncio.to_thread(
                wait_until, lambda: (ws / "ledger.txt").read_text() == content, 10
            )
            proxy.refuse.set()
            proxy.cut()
            proxy.blackhole.clear()
            asyncio.get_running_loop().call_later(0.5, proxy.refuse.clear)
            res = await write
            assert res.get("replayed") is True  # the retry found the first attempt applied
            assert (ws / "ledger.txt").read_text() == "start\nrecord 1\n"
            assert dev.connects == 3
        finally:
            with contextlib.suppress(Exception):
                await direct.close()
            if dev.client is not None:
                await dev.client.close()
            proxy.close()
            bridge.stop()

    asyncio.run(main())


# -- a full disk ---------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs (needs root or CAP_SYS_ADMIN); None if done, else why not."""
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run mount: {exc}"
    if res.returncode != 0:
        return f"mount -t tmpfs not permitted here: {res.stderr.strip() or res.returncode}"
    return None


def _reply(client: IndependentClient, rid: int) -> dict[str, Any]:
    while True:
        msg = json.loads(client.recv_plain(timeout=60))
        if msg.get("id") == rid and "ok" in msg:
            return msg


class _UsernsBridge(BridgeProcess):
    """The bridge in its own user and mount namespaces (`unshare -Urm`), where it may mount a
    tmpfs on its workspace without root. The test sees that tmpfs via /proc/<pid>/root."""

    def __init__(self, workspace: Path, state_dir: Path, size: str) -> None:
        self.workspace = workspace
        self.state_dir = state_dir
        script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"'
        self.proc = subprocess.Popen(
            ["unshare", "-Urm", "sh", "-c", script, "sh", str(workspace),
             sys.executable, "-m", "bridge", "serve", "--json", "--no-pair", "--port", "0",
             "--workspace", str(workspace), "--state-dir", str(state_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bridge did not start: {self.proc.stderr.read()}")
        self.info = json.loads(line)
        self.url = self.info["url"]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.ws_url = f"ws://127.0.0.1:{self.port}/kite/v1"


def _userns_ok() -> str | None:
    try:
        res = subprocess.run(
            ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || exit 3"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    if res.returncode != 0:
        return f"no unprivileged user+mount namespaces here: {res.stderr.strip() or res.returncode}"
    return None


@contextlib.contextmanager
def _bridge_on_a_full_disk(tmp_path: Path, how: str) -> Iterator[tuple[BridgeProcess, Path]]:
    """A bridge whose workspace is a 1 MiB tmpfs; yields it and where the test sees that tmpfs."""
    ws = tmp_path / "ws"
    ws.mkdir()
    state = tmp_path / "state"  # the state dir (snapshots) stays on the big disk
    if how == "mount":
        why = _mount_tmpfs(ws, "1m")
        if why is not None:
            pytest.skip(f"a full disk needs a small real file system: {why}")
        try:
            bridge = BridgeProcess(ws, state)
            try:
                yield bridge, ws
            finally:
                bridge.stop()
        finally:
            subprocess.run(["umount", "-l", str(ws)], capture_output=True, timeout=10)
    else:
        why = _userns_ok()
        if why is not None:
            pytest.skip(f"a full disk without root needs a user namespace: {why}")
        bridge = _UsernsBridge(ws, state, "1m")
        try:
            yield bridge, Path(f"/proc/{bridge.proc.pid}/root") / str(ws).lstrip("/")
        finally:
            bridge.stop()


@pytest.mark.parametrize("how", ["mount", "userns"])
def test_full_disk_is_a_clear_enospc_and_no_torn_file(tmp_path: Path, how: str) -> None:
    """A 1 MiB tmpfs as the workspace: mounted directly (root), or by the bridge inside its own
    user and mount namespaces (any user, where the kernel allows them)."""
    with _bridge_on_a_full_disk(tmp_path, how) as (bridge, ws):
        old = "precious\n" * 1000  # 9 KB
        (ws / "keep.txt").write_text(old)
        client, _, _ = pair_independent(bridge)
        big = "y" * (2 * 1024 * 1024)
        for rid, path in ((800, "keep.txt"), (801, "new.txt")):
            env = {"id": rid, "op": "fs.write", "args": {"path": path, "content": big}}
            for frame in encode_envelope(env):  # envelope chunks: 2 MB is many frames
                client.send_plain(frame)
            r = _reply(client, rid)
            assert r["ok"] is False and r["error"]["code"] == ENOSPC, r
            assert "space" in r["error"]["message"].lower(), r
        # Binary upload through data chunks hits the same wall.
        client.send_plain(
            json.dumps(
                {"id": 900, "op": "fs.write", "args": {"path": "b.bin", "binary": True}}
            ).encode()
        )
        for frame in chunk_payload(900, os.urandom(2 * 1024 * 1024)):
            client.send_plain(frame)
        msg = _reply(client, 900)
        assert msg["ok"] is False and msg["error"]["code"] == ENOSPC, msg
        # Nothing torn, nothing left behind: the old file whole, no temp files, no new file.
        assert (ws / "keep.txt").read_text() == old
        assert sorted(p.name for p in ws.iterdir()) == ["keep.txt"]
        # The space is free again: an ordinary write goes through.
        ok = client.request("fs.write", {"path": "keep.txt", "content": old + "more\n"})
        want = hashlib.sha256((old + "more\n").encode()).hexdigest()
        assert ok.result and ok.result["sha256"] == want
        assert (ws / "keep.txt").read_text() == old + "more\n"
        client.close()
