"""The web app's Python side, running under Pyodide in a Web Worker (web/app/worker.js).

The worker's JavaScript boots Pyodide, installs this module from the app's wheel and forwards
the page's messages: `start`, `submit`, `approve`, `abort`, and `handle` for everything else
(sessions, files, settings, hosts: one JSON message each, dispatched by `App.handle`).
Everything going back to the page is a plain dict passed to ``kitePost`` (a JS function on the
worker's global).

Keys: each paired host has its own non-extractable X25519 ``CryptoKeyPair`` that the worker's
JS keeps in IndexedDB (``kiteDeviceKey(name)``), so a private half never exists as bytes; the
host list (pinned host key, bridge URL, name), the settings and the session cache are JSON
strings in the same store (``kiteStore``). Keys of the store:

- ``hosts``: ``[{"id", "name", "url", "host", "key"}]``; ``current_host``: an id;
- ``device:<host id>``: that host's device key pair (``device`` for the first, pre-list pairing);
- ``settings``: ``{"route", "model", "api_key", "base_url", "permissions": {tool: action}}``;
- ``session:<host id>:<session id>``: the SessionSync cache of a session;
- ``sessions:<host id>``: the last session list seen (for offline reading);
- ``current_session:<host id>``: the session shown, resumed after a reload.

Connection: pairing (``kite.v1.pair``, XXpsk3) once per host with the link's secret, then
``kite.v1`` (XX) on every later visit; a lost connection is retried with exponential backoff,
and the state the page shows (``pairing``/``ready``/``offline``/``error``) follows it. A device
the bridge refuses after the handshake (revoked) ends in ``error`` with a clear message rather
than retrying forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import js  # type: ignore[import-not-found]
from js import kiteDeviceKey, kitePost, kiteStore  # type: ignore[import-not-found]

from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.client import ChannelClosed, KiteClient
from agent_core.pairing import b64url, b64url_decode, parse_link, url_netloc, websocket_url
from agent_core.rpc.errors import ENOENT, RpcError
from agent_core.runtime import default_crypto_backend, open_transport

# Only what connecting needs is imported at boot. The agent (loop, tools, providers, sessions,
# plugins: ~250 ms of imports under Pyodide) is imported after `ready`, by the setup that
# follows it (`App._on_connected`), or by the first thing that needs it.
if TYPE_CHECKING:
    from agent_core.agent import events as ev
    from agent_core.agent.loop import Agent
    from agent_core.agent.permissions import PermissionReply, PermissionRequest, Ruleset
    from agent_core.agent.session import Session
    from agent_core.agent.sync import SessionSync

BACKOFF_MAX_S = 30.0
CACHED_AFTER_S = 0.5  # show the cached session if connecting has not finished by then
DEVICE_NAME = "Kite web app"
ROUTES = ("local", "bridge", "direct")
# Permission keys the settings offer (write/apply_patch fold into edit).
PERMISSION_TOOLS = ("read", "list", "glob", "grep", "edit", "bash")
VIEW_MAX_LINES = 5000
DEFAULT_SETTINGS: dict[str, Any] = {
    "route": "local",
    "model": "",
    "api_key": "",
    "base_url": "",
    "permissions": {},
}


def post(kind: str, **data: Any) -> None:
    """Send one message to the page (JSON-shaped, so structured clone copies it)."""
    data["type"] = kind
    kitePost(json.dumps(data, default=str))


def state(name: str, detail: str = "") -> None:
    post("state", state=name, detail=detail)
    mark(f"state_{name}")


def mark(name: str) -> None:
    """A boot milestone for `window.kiteMarks` (ms since the page's navigation; the page
    converts from absolute time, as the worker's clock starts later)."""
    perf = js.performance
    post("mark", name=name, at=perf.timeOrigin + perf.now())


def _netloc(url: str) -> str:
    try:
        return url_netloc(url)[1]
    except ValueError:
        return ""


class Refused(Exception):
    """The bridge completed the handshake and then closed: this device is not (or no longer)
    registered there. Retrying cannot help; pairing again can."""


async def store_get_json(key: str, default: Any = None) -> Any:
    value = await kiteStore.get(key)
    if not isinstance(value, str):
        return default
    try:
        return json.loads(value)
    except ValueError:
        return default


async def store_put_json(key: str, value: Any) -> None:
    await kiteStore.put(key, json.dumps(value))


class IdbCache:
    """`CacheStorage` for SessionSync over IndexedDB. The seam is synchronous and IndexedDB is
    not: entries are preloaded (`preload`) and every save is written behind, in order."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.data: dict[str, dict[str, Any]] = {}
        self._writes: asyncio.Task[Any] | None = None

    def key(self, session_id: str) -> str:
        return f"session:{self.host_id}:{session_id}"

    async def preload(self, session_id: str) -> dict[str, Any] | None:
        data = await store_get_json(self.key(session_id))
        if isinstance(data, dict) and data.get("id") == session_id:
            self.data[session_id] = data
            return data
        return None

    def load(self, session_id: str) -> dict[str, Any] | None:
        return self.data.get(session_id)

    def save(self, session_id: str, data: dict[str, Any]) -> None:
        self.data[session_id] = data
        text = json.dumps(data)
        prev = self._writes

        async def write() -> None:
            if prev is not None:
                with contextlib.suppress(Exception):
                    await prev
            await kiteStore.put(self.key(session_id), text)

        self._writes = _spawn(write())

    async def forget(self, session_id: str) -> None:
        self.data.pop(session_id, None)
        await kiteStore.delete(self.key(session_id))


def history_items(session: Session) -> list[dict[str, Any]]:
    """The conversation as the page draws it: user and assistant text, one card per tool call."""
    results: dict[str, Any] = {}
    for m in session.messages:
        for p in m.parts:
            if p.type == "tool_result":
                results[p.call_id] = p
    changed = {cs.call_id: cs for cs in session.changes}
    items: list[dict[str, Any]] = []
    for m in session.messages:
        if m.role == "user":
            text = m.text()
            if text:
                items.append({"kind": "user", "text": text})
        elif m.role == "assistant":
            text = m.text()
            if text:
                items.append({"kind": "assistant", "text": text})
            for call in m.tool_calls():
                r = results.get(call.id)
                cs = changed.get(call.id)
                items.append(
                    {
                        "kind": "tool",
                        "id": call.id,
                        "name": call.name,
                        "args": call.arguments,
                        "output": session.outputs.get(call.id) or (r.content if r else ""),
                        "status": "error" if (r is None or r.is_error) else "ok",
                        "changed": bool(cs and not cs.undone),
                    }
                )
    return items


class App:
    """The paired hosts, one live bridge connection, the session shown and its agent."""

    def __init__(self) -> None:
        self.backend = default_crypto_backend()
        self.hosts: list[dict[str, Any]] = []
        self.host: dict[str, Any] | None = None
        self.client: KiteClient | None = None
        self.info: dict[str, Any] = {}
        self.agent: Agent | None = None
        self.sync: SessionSync | None = None
        self.cache: IdbCache | None = None
        self.settings: dict[str, Any] = dict(DEFAULT_SETTINGS)
        self.approvals: dict[str, asyncio.Future[bool]] = {}
        self.connected = asyncio.Event()
        self._conn: asyncio.Task[Any] | None = None
        self._connect_tried = asyncio.Event()  # the first attempt ended, either way
        self._setup: asyncio.Future[None] | None = None  # what follows `ready` (_on_connected)

    # -- hosts ---------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read hosts and settings; turn a pre-host-list pairing (host/url/device) into a host."""
        self.hosts = [h for h in await store_get_json("hosts", []) if isinstance(h, dict)]
        if not self.hosts:
            host, url = await kiteStore.get("host"), await kiteStore.get("url")
            if isinstance(host, str) and isinstance(url, str):
                entry = self._entry(url, host, key="device")
                self.hosts = [entry]
                await self._save_hosts(entry["id"])
        saved = await store_get_json("settings", {})
        if isinstance(saved, dict):
            self.settings = {**DEFAULT_SETTINGS, **saved}
        cur = await kiteStore.get("current_host")
        self.host = next((h for h in self.hosts if h["id"] == cur), None) or (
            self.hosts[0] if self.hosts else None
        )

    @staticmethod
    def _entry(url: str, host_b64: str, key: str | None = None) -> dict[str, Any]:
        hid = host_b64.replace("=", "")[:16]
        return {
            "id": hid,
            "name": _netloc(url) or url,
            "url": url,
            "host": host_b64,
            "key": key or f"device:{hid}",
        }

    async def _save_hosts(self, current: str | None) -> None:
        await store_put_json("hosts", self.hosts)
        if current is not None:
            await kiteStore.put("current_host", current)

    def post_hosts(self) -> None:
        post(
            "hosts",
            hosts=[{"id": h["id"], "name": h["name"], "url": h["url"]} for h in self.hosts],
            current=self.host["id"] if self.host else None,
        )

    async def _static(self, host: dict[str, Any]) -> Any:
        pair = await kiteDeviceKey(host["key"])
        return await self.backend.keypair_from_crypto_keys(pair.privateKey, pair.publicKey)

    async def pair(self, link_url: str) -> dict[str, Any]:
        """Pair with the link's bridge (XXpsk3), then add it to the hosts and make it current."""
        link = parse_link(link_url)
        state("pairing", "pairing with the bridge")
        host_b64 = b64url(link.host_key)
        entry = next((h for h in self.hosts if h["host"] == host_b64), None)
        if entry is None:
            entry = self._entry(link.base_url, host_b64)
        entry["url"] = link.base_url
        static = await self._static(entry)
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
        try:
            await client.call("sys.ping", timeout=10)  # the bridge really registered us
        finally:
            await client.close()
        self.hosts = [h for h in self.hosts if h["id"] != entry["id"]] + [entry]
        await self._save_hosts(entry["id"])
        self.host = entry
        return entry

    async def connect_once(self, host: dict[str, Any]) -> KiteClient:
        mark("connect")
        static = await self._static(host)
        mark("device_key")
        transport = await open_transport(websocket_url(str(host["url"])), SUBPROTOCOL_CONNECT)
        mark("ws_open")
        client = await KiteClient.handshake(
            transport,
            self.backend,
            mode=SUBPROTOCOL_CONNECT,
            static=static,
            host_key=b64url_decode(str(host["host"])),
            info={"name": DEVICE_NAME},
        )
        mark("handshake")
        try:
            await client.call("sys.ping", timeout=10)
            mark("ping")
        except ChannelClosed as exc:
            await client.close()
            # The handshake passed our checks, then the bridge hung up: it does not know us.
            if "1008" in str(exc):
                raise Refused(str(exc)) from exc
            raise
        return client

    async def run(self, link_url: str | None) -> None:
        """Load the device's state, pair if asked, then connect to the current host."""
        mark("run")
        await self.load()
        mark("loaded")
        if link_url:
            try:
                await self.pair(link_url)
            except Exception as exc:
                state("error", f"pairing failed: {exc}")
                self.post_hosts()
                return
        self.post_hosts()
        if self.host is None:
            state("error", "this browser is not paired: open a pairing link (kite pair)")
            return
        self._conn = _spawn(self._connect_loop(self.host))
        # The cached session is for reading while there is no connection: shown at once when
        # connecting fails, after a short wait while it is under way, never over a live one.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._connect_tried.wait()), CACHED_AFTER_S)
        if not self.connected.is_set():
            await self._show_cached()

    async def _connect_loop(self, host: dict[str, Any]) -> None:
        """Stay connected to `host`, retrying with backoff; ends on refusal or a host switch."""
        delay = 1.0
        while True:
            try:
                client = await self.connect_once(host)
            except Refused:
                self._connect_tried.set()
                state(
                    "error",
                    f"{host['name']} refused this device (it was revoked or is unknown there). "
                    "Pair again with a new link from `kite pair`.",
                )
                return
            except Exception as exc:
                state("offline", f"bridge unreachable ({exc}); retrying in {delay:.0f} s")
                self._connect_tried.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            delay = 1.0
            self.client = client
            self.connected.set()
            self._connect_tried.set()
            # `ready` as soon as the channel works (handshake and a ping): what follows (host
            # info, the session, plugins, building the agent) runs after it, and whatever the
            # page asks meanwhile waits for it (`_settled`).
            state("ready", json.dumps(client.server_info, default=str))
            self._setup = asyncio.ensure_future(self._on_connected(host, client))
            try:
                await self._setup
            except Exception as exc:  # the link broke while setting up: retry like a loss
                self.connected.clear()
                state("offline", f"connection lost while starting ({exc}); reconnecting")
                await client.close()
                continue
            mark("setup_done")
            await client.wait_closed()
            self.connected.clear()
            if self.agent is not None:
                self.agent.abort()
            state("offline", "connection lost; reconnecting")

    async def _on_connected(self, host: dict[str, Any], client: KiteClient) -> None:
        try:
            self.info = dict(await client.call("sys.info", timeout=10))
        except RpcError:
            self.info = {}
        mark("info")
        ws = self.info.get("workspace")
        name = f"{ws} · {_netloc(host['url'])}" if ws else host["name"]
        if name != host["name"]:
            host["name"] = name
            await self._save_hosts(None)
            self.post_hosts()
        if self.sync is not None and self.cache is not None and self.cache.host_id == host["id"]:
            self.sync.client = client  # a reconnect: send what the bridge missed
            await self.sync.push()
        else:
            cur = await kiteStore.get(f"current_session:{host['id']}")
            await self._open_session(cur if isinstance(cur, str) else None)
        mark("session")
        # Wasm plugins hook (plugins helper; agent_core/plugins/device.py): the bridge's installed
        # plugins, trust and hash checked here, run in this worker; refused ones become notices.
        from agent_core.plugins.device import load_device_tools

        self.plugin_tools = await load_device_tools(
            client, on_error=lambda e: post("notice", text=f"plugin not loaded: {e}")
        )
        mark("plugins")
        self._make_agent()

    def _setup_finished(self) -> bool:
        return self._setup is not None and self._setup.done()

    async def _settled(self) -> None:
        """Wait for the setup that follows `ready`, if it is still running (never raises: a
        failed setup is reported by the connection loop)."""
        setup = self._setup
        if setup is not None and not setup.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(setup)

    # -- sessions ------------------------------------------------------------------------------

    def _cache(self) -> IdbCache:
        assert self.host is not None
        if self.cache is None or self.cache.host_id != self.host["id"]:
            self.cache = IdbCache(self.host["id"])
        return self.cache

    async def _show_cached(self) -> None:
        """Before any connection: the current session as this device last saw it (offline)."""
        from agent_core.agent.session import Session

        assert self.host is not None
        cur = await kiteStore.get(f"current_session:{self.host['id']}")
        if not isinstance(cur, str):
            return
        data = await self._cache().preload(cur)
        if data is None or self.sync is not None:  # a live session is shown meanwhile
            return
        with contextlib.suppress(KeyError, TypeError, ValueError):
            session = Session.from_json(data)
            self._post_history(session)

    def _post_history(self, session: Session) -> None:
        post(
            "history",
            session={"id": session.id, "title": session.title},
            items=history_items(session),
        )

    async def _open_session(self, session_id: str | None) -> None:
        """Make `session_id` (resumed from the bridge and the cache) or a new one current."""
        from agent_core.agent.session import Session
        from agent_core.agent.sync import SessionSync, resume

        assert self.host is not None and self.client is not None
        cache = self._cache()
        model = self.settings.get("model", "")
        sync: SessionSync | None = None
        if session_id:
            await cache.preload(session_id)
            try:
                sync = await resume(self.client, session_id, cache=cache, model=model)
            except RpcError as exc:
                if exc.code != ENOENT:
                    raise
        if sync is None:
            sync = SessionSync(self.client, Session(), cache=cache, model=model, synced=None)
        self.sync = sync
        await kiteStore.put(f"current_session:{self.host['id']}", sync.session.id)
        self._post_history(sync.session)
        if self.client is not None and self.connected.is_set() and self._setup_finished():
            self._make_agent()

    async def list_sessions(self) -> None:
        assert self.host is not None
        key = f"sessions:{self.host['id']}"
        offline = not self.connected.is_set() or self.client is None
        if offline:
            sessions = await store_get_json(key, [])
        else:
            assert self.client is not None
            res = await self.client.call("session.list", {"limit": 200}, timeout=15)
            sessions = [
                {k: s.get(k) for k in ("id", "title", "updated_at", "messages")}
                for s in res.get("sessions", [])
            ]
            await store_put_json(key, sessions)
        cur = self.sync.session if self.sync is not None else None
        if cur is not None and not any(s["id"] == cur.id for s in sessions):
            # The current session is not on the bridge yet (nothing sent): list it anyway.
            sessions.insert(
                0,
                {
                    "id": cur.id,
                    "title": cur.title,
                    "updated_at": cur.created_at,
                    "messages": len(cur.messages),
                },
            )
        post("sessions", sessions=sessions, current=cur.id if cur else None, offline=offline)

    # -- the agent -----------------------------------------------------------------------------

    def _provider(self) -> tuple[Any, str | None]:
        """The model route from the settings; (provider, why it fell back to local)."""
        from agent_core.agent.local import LocalProvider
        from agent_core.llm.providers import make_provider

        local = LocalProvider()
        route = self.settings.get("route", "local")
        model = str(self.settings.get("model") or "").strip()
        if route == "local" or not model:
            return local, (None if route == "local" else "no model set: local commands only")
        try:
            if route == "bridge":
                return make_provider(model, route="bridge", client=self.client), None
            return make_provider(
                model,
                route="direct",
                api_key=self.settings.get("api_key") or None,
                base_url=self.settings.get("base_url") or None,
            ), None
        except (ValueError, RuntimeError) as exc:
            return local, f"{exc}; using local commands only"

    def _ruleset(self) -> Ruleset:
        from agent_core.agent.permissions import ACTIONS, DEFAULT_RULES, Rule, Ruleset

        rules = list(DEFAULT_RULES)
        for tool, action in (self.settings.get("permissions") or {}).items():
            if tool in PERMISSION_TOOLS and action in ACTIONS:
                rules.append(Rule(tool, "*", action))
        return Ruleset(rules)

    def _make_agent(self) -> None:
        from agent_core.agent.local import LocalProvider
        from agent_core.agent.loop import Agent, LoopConfig, system_prompt
        from agent_core.agent.permissions import PermissionGate
        from agent_core.plugins.device import with_tools

        if self.client is None or self.sync is None:
            return
        provider, warning = self._provider()
        config = LoopConfig(system=system_prompt(self.info, time.strftime("%Y-%m-%d")))
        self.agent = Agent(
            provider,
            self.client,
            session=self.sync.session,
            gate=PermissionGate(self._ruleset(), approve=self._approve),
            config=config,
            on_event=self.sync.wrap(self._on_event),
            command_provider=LocalProvider(),
        )
        self.agent.registry = with_tools(self.agent.registry, getattr(self, "plugin_tools", []))
        if warning:
            post("notice", text=warning)
        self.post_undo()

    async def _approve(self, request: PermissionRequest) -> PermissionReply:
        from agent_core.agent.permissions import PermissionReply

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
        from agent_core.agent import events as ev

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
            if self.sync is not None:
                post("session", id=self.sync.session.id, title=self.sync.session.title)
            self.post_undo()

    async def submit(self, text: str) -> None:
        await self._settled()
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
        if self.sync is not None and self.sync.error:
            post("notice", text=self.sync.error)

    # -- undo / redo of a step (Agent.undo/redo, docs/architecture.md) ---------------------------

    def post_undo(self) -> None:
        """Which tool cards carry the Undo and Redo buttons, and which steps are undone."""
        session = self.sync.session if self.sync is not None else None
        if session is None or self.agent is None or not hasattr(self.agent, "can_undo"):
            post("undo_state", undo=None, redo=None, undone=[])
            return
        from agent_core.agent.undo import redo_target, undo_target

        u, r = undo_target(session), redo_target(session)
        post(
            "undo_state",
            undo={"call": u[-1].call_id, "paths": self.agent.undo_preview()} if u else None,
            redo={"call": r[-1].call_id, "paths": self.agent.redo_preview()} if r else None,
            undone=[cs.call_id for cs in session.changes if cs.undone],
        )

    async def _undo_redo(self, which: str) -> None:
        self._need_client()
        self._idle()
        if self.agent is None or self.sync is None:
            raise RuntimeError("no session")
        paths = await (self.agent.undo() if which == "undo" else self.agent.redo())
        await self.sync.push()  # saves session.changes (device cache; messages are unchanged)
        done = "Undone" if which == "undo" else "Redone"
        post("notice", text=f"{done}: {', '.join(paths)}" if paths else f"Nothing to {which}.")
        self.post_undo()

    async def op_undo(self, msg: dict[str, Any]) -> None:
        await self._undo_redo("undo")

    async def op_redo(self, msg: dict[str, Any]) -> None:
        await self._undo_redo("redo")

    # -- the page's other requests -------------------------------------------------------------

    def _need_client(self) -> KiteClient:
        if self.client is None or not self.connected.is_set():
            raise RuntimeError("not connected to the bridge")
        return self.client

    def _idle(self) -> None:
        if self.agent is not None and self.agent.running:
            raise RuntimeError("the agent is busy: stop it first")

    async def handle(self, msg: dict[str, Any]) -> None:
        """One request from the page; failures go back as `op_error` and change nothing."""
        await self._settled()
        op = str(msg.get("type", ""))
        fn = getattr(self, "op_" + op, None)
        if fn is None:
            post("op_error", op=op, error=f"unknown request {op!r}")
            return
        try:
            await fn(msg)
        except RpcError as exc:
            post("op_error", op=op, error=f"{exc.code}: {exc.message}")
        except Exception as exc:  # UndoError, ValueError...: the message says what to do
            post("op_error", op=op, error=str(exc) or type(exc).__name__)
        if op in ("undo", "redo"):
            self.post_undo()  # re-enable the buttons whatever happened

    async def op_sessions(self, msg: dict[str, Any]) -> None:
        await self.list_sessions()

    async def op_session_new(self, msg: dict[str, Any]) -> None:
        self._need_client()
        self._idle()
        await self._open_session(None)
        await self.list_sessions()

    async def op_session_open(self, msg: dict[str, Any]) -> None:
        from agent_core.agent.session import Session

        sid = str(msg["id"])
        if self.client is None or not self.connected.is_set():
            # Offline: a session this device has cached can still be read (not continued).
            data = await self._cache().preload(sid) if self.host is not None else None
            if data is None:
                raise RuntimeError("offline, and this session is not cached on this device")
            self._post_history(Session.from_json(data))
            post("notice", text="Offline: showing this device's copy (read-only until connected)")
            return
        self._idle()
        await self._open_session(sid)
        await self.list_sessions()

    async def op_session_rename(self, msg: dict[str, Any]) -> None:
        client = self._need_client()
        sid, title = str(msg["id"]), str(msg.get("title", "")).strip()
        if not title:
            raise ValueError("a title cannot be empty")
        cur = self.sync.session if self.sync is not None else None
        if cur is not None and cur.id == sid and self.sync is not None and self.sync.synced is None:
            cur.title = title  # not on the bridge yet: the first push carries the title
        else:
            await client.call("session.rename", {"id": sid, "title": title}, timeout=15)
        if cur is not None and cur.id == sid:
            cur.title = title  # later appends send the title too: keep them in agreement
            post("session", id=cur.id, title=title)
        await self.list_sessions()

    async def op_session_delete(self, msg: dict[str, Any]) -> None:
        client = self._need_client()
        sid = str(msg["id"])
        cur = self.sync.session if self.sync is not None else None
        if cur is not None and cur.id == sid:
            self._idle()
        if not (cur is not None and cur.id == sid and self.sync and self.sync.synced is None):
            await client.call("session.delete", {"id": sid}, timeout=15)
        await self._cache().forget(sid)
        if cur is not None and cur.id == sid:
            await self._open_session(None)
        await self.list_sessions()

    async def op_files(self, msg: dict[str, Any]) -> None:
        client = self._need_client()
        path = str(msg.get("path") or ".")
        res = await client.call("fs.list", {"path": path, "limit": 1000}, timeout=15)
        post("files", path=path, entries=res.get("entries", []), truncated=res.get("truncated"))

    async def op_file_read(self, msg: dict[str, Any]) -> None:
        client = self._need_client()
        path = str(msg["path"])
        try:
            res = await client.call(
                "fs.read", {"path": path, "start_line": 1, "end_line": VIEW_MAX_LINES}, timeout=30
            )
        except RpcError as exc:
            if exc.code == "EINVAL" and "UTF-8" in exc.message:
                post("file", path=path, content=None, binary=True)
                return
            raise
        post(
            "file",
            path=path,
            content=res.get("content", ""),
            size=res.get("size"),
            total_lines=res.get("total_lines"),
            truncated=bool(res.get("truncated")) or (res.get("total_lines") or 0) > VIEW_MAX_LINES,
        )

    def post_settings(self, saved: bool = False) -> None:
        s = self.settings
        post(
            "settings",
            route=s.get("route", "local"),
            model=s.get("model", ""),
            base_url=s.get("base_url", ""),
            key_set=bool(s.get("api_key")),  # the key itself never goes back to the page
            permissions=s.get("permissions") or {},
            tools=list(PERMISSION_TOOLS),
            saved=saved,
        )

    async def op_settings(self, msg: dict[str, Any]) -> None:
        self.post_settings()

    async def op_settings_set(self, msg: dict[str, Any]) -> None:
        """Validate everything first; a bad value changes nothing."""
        from agent_core.agent.permissions import ACTIONS

        self._idle()
        route = msg.get("route", self.settings["route"])
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}")
        model = str(msg.get("model", "")).strip()
        if route != "local" and model:
            name, sep, rest = model.partition("/")
            if not sep or not rest or name not in ("openai", "anthropic"):
                raise ValueError("model must be openai/<model> or anthropic/<model>")
        perms = msg.get("permissions", {})
        if not isinstance(perms, dict):
            raise ValueError("permissions must be an object")
        clean: dict[str, str] = {}
        for tool, action in perms.items():
            if tool not in PERMISSION_TOOLS:
                raise ValueError(f"unknown tool {tool!r}")
            if action in ("", "default", None):
                continue
            if action not in ACTIONS:
                raise ValueError(f"{tool}: {action!r} is not allow, ask or deny")
            clean[tool] = action
        new = dict(self.settings)
        new.update(route=route, model=model, permissions=clean)
        new["base_url"] = str(msg.get("base_url", "")).strip()
        if msg.get("api_key"):
            new["api_key"] = str(msg["api_key"])
        if msg.get("clear_key"):
            new["api_key"] = ""
        await store_put_json("settings", new)
        self.settings = new
        self._make_agent()
        self.post_settings(saved=True)

    async def op_hosts(self, msg: dict[str, Any]) -> None:
        self.post_hosts()

    async def _switch(self, host: dict[str, Any]) -> None:
        self._idle()
        if self._conn is not None:
            self._conn.cancel()
            with contextlib.suppress(BaseException):
                await self._conn
        if self.client is not None:
            await self.client.close()
        self.connected.clear()
        self.client = self.agent = self.sync = None
        self.host = host
        await self._save_hosts(host["id"])
        self.post_hosts()
        post("history", session=None, items=[])
        state("offline", f"connecting to {host['name']}")
        await self._show_cached()
        self._conn = _spawn(self._connect_loop(host))

    async def op_host_switch(self, msg: dict[str, Any]) -> None:
        host = next((h for h in self.hosts if h["id"] == msg.get("id")), None)
        if host is None:
            raise ValueError("no such host")
        await self._switch(host)

    async def op_host_add(self, msg: dict[str, Any]) -> None:
        self._idle()
        link = str(msg.get("link", "")).strip()
        parse_link(link)  # a clear error before anything changes
        old = self.host
        try:
            entry = await self.pair(link)
        except Exception as exc:
            self.host = old
            if old is not None and self.connected.is_set():
                state("ready", "")
            base = parse_link(link).base_url
            here = str(getattr(js.location, "origin", ""))
            if "failed to open" in str(exc) and not base.startswith(here):
                there = base.rstrip("/")
                raise RuntimeError(
                    f"{exc}. A bridge on another origin must be allowed twice: the bridge that "
                    f"serves this app must let the page connect to it (kite serve --connect-src "
                    f"{there}, its Content-Security-Policy connect-src) and that bridge must "
                    f"accept this page (kite serve --allow-origin {here})"
                ) from exc
            raise
        await self._switch(entry)

    async def op_host_remove(self, msg: dict[str, Any]) -> None:
        hid = msg.get("id")
        if self.host is not None and self.host["id"] == hid:
            raise ValueError("switch to another host before removing this one")
        host = next((h for h in self.hosts if h["id"] == hid), None)
        if host is None:
            raise ValueError("no such host")
        self.hosts = [h for h in self.hosts if h["id"] != hid]
        await self._save_hosts(None)
        await kiteStore.delete(host["key"])  # the device key for that host is gone for good
        self.post_hosts()


APP: App | None = None
_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def start(link_url: str | None) -> None:
    """Called once by the worker after boot (with the pairing link, if the page had one)."""
    global APP
    mark("start")
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


def handle(message: str) -> None:
    """Any other request from the page, as JSON (see `App.handle`)."""
    assert APP is not None
    _spawn(APP.handle(json.loads(message)))


__all__ = ["abort", "approve", "handle", "start", "submit"]
