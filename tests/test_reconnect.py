"""Reconnect driving: the bridge process is killed with SIGKILL mid-session and restarted on the
same port and state dir; the agent's `ReconnectingClient` reconnects by itself (with backoff)
and the session goes on, and a write whose reply was lost is applied exactly once.

A TCP relay between client and bridge (real sockets) decides exactly where the connection is
cut: after the bridge has applied a write but before its reply reaches the client, or before
the request reaches the bridge at all."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.agent.loop import Agent
from agent_core.agent.permissions import PermissionGate
from agent_core.agent.reconnect import ConnectionLost, ReconnectingClient
from agent_core.agent.session import Session
from agent_core.agent.sync import SessionSync
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT
from agent_core.client import KiteClient
from agent_core.llm.providers import make_provider
from agent_core.transport.ws_cpython import open_websocket
from tests.harness import BridgeProcess
from tests.model_server import RecordedRequest, ScriptedModelServer, ToolCall, Turn
from tests.test_tools import BridgeKey, bridge_with_key


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Bridge:
    """The bridge process of a BridgeKey, killable and restartable on the same port."""

    def __init__(self, bk: BridgeKey) -> None:
        self.bk = bk
        self.proc = bk.proc
        self.port = bk.proc.port
        self.restarts = 0

    def kill_and_restart(self) -> None:
        self.proc.stop(signal.SIGKILL)
        self.proc = BridgeProcess(
            self.bk.workspace, self.bk.proc.state_dir, "--port", str(self.port)
        )
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not self.bk.proc:
            self.proc.stop()


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    with bridge_with_key(tmp_path) as bk:
        b = Bridge(bk)
        try:
            yield b
        finally:
            b.stop()


def opener(bk: BridgeKey, port: int) -> Any:
    async def connect() -> KiteClient:
        backend = CpythonCryptoBackend()
        transport = await open_websocket(f"ws://127.0.0.1:{port}/kite/v1", SUBPROTOCOL_CONNECT)
        return await KiteClient.handshake(
            transport,
            backend,
            mode=SUBPROTOCOL_CONNECT,
            static=backend.keypair_from_private_bytes(bk.device_private),
            host_key=bk.host_key,
        )

    return connect


# -- an agent run across a bridge restart -----------------------------------------------------


def test_agent_run_survives_a_bridge_kill_between_steps(bridge: Bridge) -> None:
    ws = bridge.bk.workspace
    (ws / "a.txt").write_text("v0\n")

    def restart_then_edit(req: RecordedRequest) -> Turn:
        bridge.kill_and_restart()  # SIGKILL mid-session; same port, same state dir
        return Turn(
            tool_calls=[
                ToolCall("edit", {"file_path": "a.txt", "old_string": "v1", "new_string": "v2"})
            ]
        )

    script = [
        Turn(
            tool_calls=[
                ToolCall("edit", {"file_path": "a.txt", "old_string": "v0", "new_string": "v1"})
            ]
        ),
        restart_then_edit,
        Turn(text="Both edits done."),
    ]
    states: list[str] = []

    async def go() -> None:
        connect = opener(bridge.bk, bridge.port)
        rc = ReconnectingClient(
            connect, client=await connect(), on_state=lambda s, d: states.append(s)
        )
        with ScriptedModelServer(script).in_thread() as srv:
            provider = make_provider(
                "openai/model-x", route="direct", base_url=srv.base_url, api_key="k"
            )
            session = Session()
            sync = SessionSync(rc, session)
            agent = Agent(
                provider, rc, session=session, gate=PermissionGate(yes=True),
                on_event=sync.wrap(),
            )  # fmt: skip
            result = await agent.run("edit a.txt twice")
        assert result.ok and result.text == "Both edits done.", result
        assert await sync.push()
        assert rc.reconnects == 1 and states[-1] == "connected"
        stored = await rc.call("session.get", {"id": session.id})
        assert [m["message"] for m in stored["messages"]] == [m.to_json() for m in session.messages]
        assert len(stored["messages"]) == 6
        await rc.close()

    asyncio.run(go())
    assert bridge.restarts == 1
    assert (ws / "a.txt").read_text() == "v2\n"


# -- a pending write across a kill: exactly once -------------------------------------------------


class CuttingRelay:
    """A TCP relay to the bridge port; `arm("reply")` drops the bridge's next bytes and cuts the
    connection, `arm("request")` does the same to the client's next bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed: str | None = None
        self.cut = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def arm(self, direction: str) -> None:
        self.cut.clear()
        self.armed = direction

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return

        def close_all() -> None:
            cw.transport.abort()
            uw.transport.abort()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, name: str) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if self.armed == name:
                        self.armed = None
                        close_all()  # these bytes never arrive
                        self.cut.set()
                        return
                    dst.write(data)
                    await dst.drain()
            close_all()

        await asyncio.gather(pipe(cr, uw, "request"), pipe(ur, cw, "reply"))


@pytest.mark.parametrize("cut", ["reply", "request"])
def test_a_write_cut_by_a_kill_is_applied_exactly_once(bridge: Bridge, cut: str) -> None:
    ws = bridge.bk.workspace
    (ws / "f.txt").write_text("v1\n")

    async def go() -> dict[str, Any]:
        relay = CuttingRelay(bridge.port)
        await relay.start()
        connect = opener(bridge.bk, relay.port)
        rc = ReconnectingClient(connect, client=await connect())
        try:
            await rc.call("fs.stat", {"path": "f.txt"})
            relay.arm(cut)
            write = asyncio.ensure_future(
                rc.call("fs.write", {"path": "f.txt", "content": "v2\n", "if_match": sha("v1\n")})
            )
            await asyncio.wait_for(relay.cut.wait(), 30)
            await asyncio.to_thread(bridge.kill_and_restart)
            result = await asyncio.wait_for(write, 60)
            history = await rc.call("fs.history", {"path": "f.txt"})
            # Not retried: a command might run twice. The error says so.
            relay.arm("reply")
            with pytest.raises(ConnectionLost, match="may or may not have taken effect"):
                await rc.call("exec.run", {"argv": ["true"]})
            assert rc.reconnects >= 1
            return {"result": result, "history": history["entries"]}
        finally:
            await rc.close()
            await relay.stop()

    out = asyncio.run(go())
    assert (ws / "f.txt").read_text() == "v2\n"
    writes = [e for e in out["history"] if e["new_sha256"] == sha("v2\n")]
    assert len(writes) == 1, out["history"]  # applied once, whoever's attempt it was
    assert out["result"]["sha256"] == sha("v2\n")
    # The reply was lost after the bridge applied it: the retry recognises its own write.
    assert out["result"].get("replayed", False) is (cut == "reply")
