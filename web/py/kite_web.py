"""The web app's Python side, running under Pyodide in a Web Worker (web/app/worker.js).

The worker's JavaScript boots Pyodide, installs this module from the app's wheel and forwards
the page's messages to `start`, `submit`, `approve` and `abort`; everything going back to the
page is a plain dict passed to ``kitePost`` (a JS function on the worker's global). The device
key is a non-extractable X25519 ``CryptoKeyPair`` that the worker's JS keeps in IndexedDB
(``kiteDeviceKey``), so its private half never exists as bytes; the pinned host key and the
bridge URL are stored there too (``kiteStore``).

Connection: pairing (``kite.v1.pair``, XXpsk3) once with the link's secret, then ``kite.v1`` (XX)
on every later visit; a lost connection is retried with exponential backoff, and the state the
page shows (``pairing``/``ready``/``offline``/``error``) follows it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from js import kiteDeviceKey, kitePost, kiteStore  # type: ignore[import-not-found]

from agent_core.agent import events as ev
from agent_core.agent.local import LocalProvider
from agent_core.agent.loop import Agent
from agent_core.agent.permissions import PermissionGate, PermissionReply, PermissionRequest
from agent_core.agent.session import Session
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.client import KiteClient
from agent_core.pairing import b64url, b64url_decode, parse_link, websocket_url
from agent_core.runtime import default_crypto_backend, open_transport

BACKOFF_MAX_S = 30.0
DEVICE_NAME = "Kite web app"


def post(kind: str, **data: Any) -> None:
    """Send one message to the page (JSON-shaped, so structured clone copies it)."""
    data["type"] = kind
    kitePost(json.dumps(data, default=str))


def state(name: str, detail: str = "") -> None:
    post("state", state=name, detail=detail)


class App:
    """One bridge connection (kept alive) and one agent session over it."""

    def __init__(self) -> None:
        self.backend = default_crypto_backend()
        self.client: KiteClient | None = None
        self.agent: Agent | None = None
        self.session = Session()
        self.approvals: dict[str, asyncio.Future[bool]] = {}
        self.connected = asyncio.Event()
        self._runner: asyncio.Task[Any] | None = None

    # -- connection --------------------------------------------------------------------------

    async def _static(self) -> Any:
        pair = await kiteDeviceKey()
        return await self.backend.keypair_from_crypto_keys(pair.privateKey, pair.publicKey)

    async def pair(self, link_url: str) -> None:
        """Pair with the link's bridge (XXpsk3), then remember its host key and URL."""
        link = parse_link(link_url)
        state("pairing", "pairing with the bridge")
        static = await self._static()
        transport = await open_transport(websocket_url(link.base_url), SUBPROTOCOL_PAIR)
        client = await KiteClient.handshake(
            transport,
            self.backend,
            mode=SUBPROTOCOL_PAIR,
            static=static,
            host_key=link.host_key,
            psk=link.secret,
            info={"name": DEVICE_NAME},
        )
        await client.call("sys.ping", timeout=10)  # the bridge really registered us
        await kiteStore.put("host", b64url(link.host_key))
        await kiteStore.put("url", link.base_url)
        await client.close()

    async def connect_once(self) -> KiteClient:
        host = await kiteStore.get("host")
        url = await kiteStore.get("url")
        if not host or not url:
            raise LookupError("not paired")
        static = await self._static()
        transport = await open_transport(websocket_url(str(url)), SUBPROTOCOL_CONNECT)
        client = await KiteClient.handshake(
            transport,
            self.backend,
            mode=SUBPROTOCOL_CONNECT,
            static=static,
            host_key=b64url_decode(str(host)),
            info={"name": DEVICE_NAME},
        )
        await client.call("sys.ping", timeout=10)
        return client

    async def run(self, link_url: str | None) -> None:
        """Pair if asked, then stay connected, retrying with backoff."""
        if link_url:
            try:
                await self.pair(link_url)
            except Exception as exc:
                state("error", f"pairing failed: {exc}")
                return
        delay = 1.0
        while True:
            try:
                self.client = await self.connect_once()
            except LookupError:
                state("error", "this browser is not paired: open a pairing link (kite pair)")
                return
            except Exception as exc:
                state("offline", f"bridge unreachable ({exc}); retrying in {delay:.0f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            delay = 1.0
            self._make_agent(self.client)
            info = self.client.server_info or {}
            state("ready", json.dumps(info.get("server", info), default=str))
            self.connected.set()
            await self.client.wait_closed()
            self.connected.clear()
            if self.agent is not None:
                self.agent.abort()
            state("offline", "connection lost; reconnecting")

    def _make_agent(self, client: KiteClient) -> None:
        local = LocalProvider()
        self.agent = Agent(
            local,
            client,
            session=self.session,
            gate=PermissionGate(approve=self._approve),
            on_event=self._on_event,
            command_provider=local,
        )

    # -- the agent ------------------------------------------------------------------------------

    async def _approve(self, request: PermissionRequest) -> PermissionReply:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.approvals[request.call_id] = fut
        post(
            "approve",
            id=request.call_id,
            title=request.title,
            permission=request.permission,
            patterns=request.patterns,
            diff=request.metadata.get("diff"),
        )
        try:
            ok = await fut
        finally:
            self.approvals.pop(request.call_id, None)
        return PermissionReply("once" if ok else "reject")

    def _on_event(self, event: ev.AgentEvent) -> None:
        if isinstance(event, ev.AssistantDelta):
            post("delta", text=event.text)
        elif isinstance(event, ev.AssistantMessage):
            post("assistant", text=event.message.text())
        elif isinstance(event, ev.ToolStarted):
            post("tool", id=event.call.id, name=event.call.name, args=event.arguments)
        elif isinstance(event, ev.ToolOutput):
            post("tool_output", id=event.call_id, stream=event.stream, text=event.text)
        elif isinstance(event, ev.ToolFinished):
            r = event.result
            post(
                "tool_done",
                id=event.call.id,
                title=r.title,
                status=r.status,
                output=r.output,
                diff=r.metadata.get("diff"),
            )
        elif isinstance(event, ev.Finished):
            post("finished", reason=event.reason, error=event.error)

    async def submit(self, text: str) -> None:
        if self.agent is None or not self.connected.is_set():
            post("finished", reason="error", error="not connected to the bridge")
            return
        if self.agent.running:
            post("finished", reason="error", error="the agent is busy")
            return
        try:
            await self.agent.run(text)
        except Exception as exc:
            post("finished", reason="error", error=str(exc))


APP: App | None = None
_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def start(link_url: str | None) -> None:
    """Called once by the worker after boot (with the pairing link, if the page had one)."""
    global APP
    APP = App()
    _spawn(APP.run(link_url or None))


def submit(text: str) -> None:
    assert APP is not None
    _spawn(APP.submit(text))


def approve(call_id: str, ok: bool) -> None:
    assert APP is not None
    fut = APP.approvals.get(call_id)
    if fut is not None and not fut.done():
        fut.set_result(bool(ok))


def abort() -> None:
    if APP is not None and APP.agent is not None:
        APP.agent.abort()


__all__ = ["abort", "approve", "start", "submit"]
