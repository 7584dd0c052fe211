"""A `Bridge` that survives a dropped connection: it reconnects by itself, with backoff, and
retries what is safe to retry — so an agent run goes on across a bridge restart.

    bridge = ReconnectingClient(open_client)        # async () -> a connected KiteClient
    agent = Agent(provider, bridge, ...)            # tools, sessions, undo: all through it
    sync = SessionSync(bridge, session)             # appends are idempotent by seq

When a call fails because the channel closed (`ConnectionError`, e.g. `ChannelClosed`), the
client is dropped; the next call (or the retry of this one) opens a new one, waiting 0.2 s,
0.4 s, ... up to 5 s between attempts (any failure to connect counts: refused, reset, an
unreadable handshake), and gives up after `give_up_after_s` with a `ConnectionError` saying so.
Which calls are retried:

- read-only ops (`fs.read`, `fs.stat`, `fs.list`, `fs.glob`, `fs.grep`, `fs.history`,
  `session.get`/`list`, `sys.*`, `model.info`, `plugin.list`): simply sent again;
- writes, applied exactly once: `fs.write` with `if_match` is retried, and an `ECONFLICT` whose
  `current_sha256` is the hash of the content being written means the lost attempt was applied
  (success, `"replayed": True`); without `if_match` the retry first checks (`fs.stat`) whether
  the content is already there. `fs.restore` likewise (its target hash, or absence, already in
  place). `fs.delete`'s retry treats `ENOENT` as done; `fs.mkdir`, `session.create` (with an
  id), `session.append` (explicit seqs), `session.rename`/`delete` are idempotent on the bridge;
- never retried, because running them twice is not harmless: `exec.run`, `fs.move`,
  `plugin.call`, uploads (binary writes), and `model.stream` (the provider retries the whole
  turn itself when nothing was streamed yet). These raise `ConnectionLost`, whose message says
  the call may or may not have taken effect.

Standard library only; the connect function is the runtime's (CPython websockets or the browser
WebSocket), so this works the same under Pyodide.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

from agent_core.rpc.errors import ECONFLICT, ENOENT, RpcError

READ_ONLY = frozenset(
    {
        "sys.ping",
        "sys.info",
        "fs.read",
        "fs.stat",
        "fs.list",
        "fs.glob",
        "fs.grep",
        "fs.history",
        "session.get",
        "session.list",
        "model.info",
        "plugin.list",
    }
)
IDEMPOTENT = frozenset(
    {
        "fs.write",
        "fs.restore",
        "fs.delete",
        "fs.mkdir",
        "session.create",
        "session.append",
        "session.rename",
        "session.delete",
    }
)


class ConnectionLost(ConnectionError):
    """The connection dropped during a call that cannot be retried safely."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def retry_safe(op: str, args: dict[str, Any] | None, upload: Any = None) -> bool:
    if upload is not None or (args or {}).get("binary"):
        return False
    if op == "session.create":
        return bool((args or {}).get("id"))
    return op in READ_ONLY or op in IDEMPOTENT


class ReconnectingClient:
    """Wraps a connect function; `call` has `KiteClient.call`'s signature (see the module doc)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        client: Any = None,
        first_delay_s: float = 0.2,
        max_delay_s: float = 5.0,
        give_up_after_s: float = 120.0,
        on_state: Callable[[str, str], Any] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._connect = connect
        self._client = client
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.give_up_after_s = give_up_after_s
        self.on_state = on_state  # ("reconnecting" | "connected", detail), for a UI
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self.reconnects = 0  # how many times a new connection was opened after a drop

    @property
    def client(self) -> Any:
        """The current connection (None while disconnected)."""
        return self._client

    def _note(self, state: str, detail: str) -> None:
        if self.on_state is not None:
            self.on_state(state, detail)

    async def connected(self) -> Any:
        """The current client, reconnecting first (with backoff) when it was dropped."""
        client = self._client
        if client is not None and not getattr(client, "closed", False):
            return client
        async with self._lock:
            client = self._client
            if client is not None and not getattr(client, "closed", False):
                return client
            self._client = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.give_up_after_s
            delay = self.first_delay_s
            last: BaseException | None = None
            while True:
                try:
                    client = await self._connect()
                except Exception as exc:  # refused, reset, a half-open relay, a bad handshake
                    last = exc
                    if loop.time() + delay > deadline:
                        raise ConnectionError(
                            f"cannot reconnect to the bridge (gave up after "
                            f"{self.give_up_after_s:g} s): {last}"
                        ) from last
                    self._note("reconnecting", f"{exc}; next try in {delay:.1f} s")
                    await self._sleep(delay)
                    delay = min(self.max_delay_s, delay * 2) * (1 + random.uniform(0, 0.1))
                    continue
                self._client = client
                self.reconnects += 1
                self._note("connected", "")
                return client

    def _drop(self, client: Any) -> None:
        if self._client is client:
            self._client = None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        on_event: Any = None,
        on_chunk: Any = None,
        upload: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        args = dict(args or {})
        kwargs: dict[str, Any] = {"on_event": on_event, "on_chunk": on_chunk, "timeout": timeout}
        if upload is not None:
            kwargs["upload"] = upload
        retried = False
        while True:
            client = await self.connected()
            try:
                if retried and op == "fs.write" and "if_match" not in args:
                    done = await self._already_written(client, args)
                    if done is not None:
                        return done
                return dict(await client.call(op, args, **kwargs))
            except RpcError as exc:
                if retried:
                    replayed = self._replayed(op, args, exc)
                    if replayed is not None:
                        return replayed
                raise
            except ConnectionError as exc:
                self._drop(client)
                if not retry_safe(op, args, upload):
                    raise ConnectionLost(
                        f"lost the connection to the bridge during {op}; it may or may not "
                        f"have taken effect ({exc})"
                    ) from exc
                self._note("reconnecting", f"{op}: {exc}")
                retried = True

    @staticmethod
    async def _already_written(client: Any, args: dict[str, Any]) -> dict[str, Any] | None:
        try:
            st = await client.call("fs.stat", {"path": args.get("path"), "hash": True})
        except RpcError:
            return None
        content = args.get("content")
        if isinstance(content, str) and st.get("sha256") == _sha(content):
            size = len(content.encode("utf-8"))
            return {"sha256": st["sha256"], "size": size, "created": False, "replayed": True}
        return None

    @staticmethod
    def _replayed(op: str, args: dict[str, Any], exc: RpcError) -> dict[str, Any] | None:
        """The result a retried call's error stands for when the lost attempt was applied."""
        current = exc.details.get("current_sha256") if exc.code == ECONFLICT else "-"
        if op == "fs.write" and isinstance(args.get("content"), str):
            want = _sha(args["content"])
            if current == want:
                size = len(args["content"].encode("utf-8"))
                return {"sha256": want, "size": size, "created": False, "replayed": True}
        if op == "fs.restore" and exc.code == ECONFLICT:
            target = args.get("sha256")
            if current == target or (current is None and target == "absent"):
                sha = None if target == "absent" else target
                return {
                    "path": args.get("path"),
                    "sha256": sha,
                    "changed": True,
                    "created": False,
                    "deleted": sha is None,
                    "replayed": True,
                }
        if op == "fs.delete" and exc.code == ENOENT:
            return {"deleted": True, "files": 0, "replayed": True}
        return None
