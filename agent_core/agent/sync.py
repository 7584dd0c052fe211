"""Device-side session persistence: the bridge keeps the history (`session.*` ops), the device
keeps a cache, and both survive a dropped connection, a client restart and a bridge restart.

`SessionSync` appends the session's new messages after every `StepFinished` and at `Finished`,
each with its index in `session.messages` as `seq`. The bridge treats a re-sent `(seq, message)`
that it already holds as a no-op, so an append whose reply was lost (a dropped connection, a
killed bridge) is simply sent again — after a reconnect, give the sync the new client
(`sync.client = ...`) and call `push()`. A conflicting seq (`ECONFLICT`: another device added
to the session) stops syncing for this run and is reported; `resume()` fetches the newer history.

Idempotent writes: `fs.write` with `if_match` is the request id of a write. `write_once` retries
such a write and, when the bridge answers `ECONFLICT` with `current_sha256` equal to the hash of
the content being written, treats it as success: the first attempt was applied and its reply
lost. A write is thus applied once or not at all.

The cache is a `CacheStorage` seam: `JsonFileCache` (a directory of JSON files) for the CPython
shells, `MemoryCache` for tests; the browser can put IndexedDB behind the same two methods.
Stdlib only, like the rest of agent_core.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from agent_core.agent.events import AgentEvent, Finished, StepFinished
from agent_core.agent.session import Session
from agent_core.agent.tools.base import maybe_await
from agent_core.llm.types import Message
from agent_core.rpc.errors import ECONFLICT, ENOENT, RpcError

# What a dropped connection or a timed-out request raises: the append is kept and retried.
_TRANSIENT: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, OSError)


def _transient_errors() -> tuple[type[BaseException], ...]:
    try:  # the CPython client's closed-channel error; absent in minimal builds
        from agent_core.client import ChannelClosed
    except ImportError:  # pragma: no cover
        return _TRANSIENT
    return (*_TRANSIENT, ChannelClosed)


# A bridge that stopped answering must not hold up the agent: the append is retried later.
CALL_TIMEOUT_S = 30.0


class CacheStorage(Protocol):
    """Where a device keeps its copy of sessions (`Session.to_json()` plus `synced`)."""

    def load(self, session_id: str) -> dict[str, Any] | None: ...

    def save(self, session_id: str, data: dict[str, Any]) -> None: ...


class MemoryCache:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def load(self, session_id: str) -> dict[str, Any] | None:
        return self.data.get(session_id)

    def save(self, session_id: str, data: dict[str, Any]) -> None:
        self.data[session_id] = json.loads(json.dumps(data))


class JsonFileCache:
    """One `<id>.json` per session in a directory (0600 files, atomic replace)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _path(self, session_id: str) -> Path:
        safe = "".join(c for c in session_id if c.isalnum() or c in "-_")[:64] or "_"
        return self.dir / f"{safe}.json"

    def load(self, session_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(session_id).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("id") == session_id else None

    def save(self, session_id: str, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self._path(session_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class SessionSync:
    """Keeps one `Session` saved on the bridge and in the device cache (see the module doc)."""

    def __init__(
        self,
        client: Any,
        session: Session,
        *,
        cache: CacheStorage | None = None,
        model: str = "",
        synced: int | None = None,
    ) -> None:
        self.client = client
        self.session = session
        self.cache = cache
        self.model = model
        # Messages [0, synced) are known to be on the bridge; None: the session may not exist.
        self.synced = synced
        self.error: str | None = None  # why syncing stopped (a conflict), if it did

    @property
    def pending(self) -> int:
        return len(self.session.messages) - (self.synced or 0)

    def _save_cache(self) -> None:
        if self.cache is not None:
            self.cache.save(self.session.id, {**self.session.to_json(), "synced": self.synced})

    async def push(self) -> bool:
        """Send the messages the bridge does not have yet. True when all are stored; False
        when the connection failed (kept for the next push) or syncing stopped on a conflict."""
        self._save_cache()
        if self.error is not None:
            return False
        try:
            if self.synced is None:
                await self.client.call(
                    "session.create",
                    {"id": self.session.id, "title": self.session.title, "model": self.model},
                    timeout=CALL_TIMEOUT_S,
                )
                self.synced = 0
            start = self.synced
            batch = [
                {"seq": start + i, "message": m.to_json()}
                for i, m in enumerate(self.session.messages[start:])
            ]
            if not batch:
                return True
            res = await self.client.call(
                "session.append",
                {
                    "id": self.session.id,
                    "messages": batch,
                    "usage": {**asdict(self.session.usage), "cost_usd": self.session.cost_usd},
                    "title": self.session.title,
                },
                timeout=CALL_TIMEOUT_S,
            )
        except RpcError as exc:
            # A conflict (another device added to the session) or a bridge without `session.*`:
            # the run goes on unsaved, and the shell reports `error`.
            if exc.code == ECONFLICT:
                self.error = f"the session changed elsewhere ({exc.message}); resume it to sync"
            else:
                self.error = f"the session could not be saved on the bridge: {exc}"
            return False
        except _transient_errors():
            return False
        self.synced = int(res.get("next_seq", start + len(batch)))
        self._save_cache()
        return True

    def wrap(self, sink: Any = None) -> Any:
        """An `on_event` sink for `Agent`: passes events on, then pushes after each step."""

        async def on_event(ev: AgentEvent) -> None:
            if sink is not None:
                await maybe_await(sink(ev))
            if isinstance(ev, (StepFinished, Finished)):
                await self.push()

        return on_event


GET_PAGE = 500  # messages per `session.get`: keeps each reply well under the envelope cap


async def _get_all(client: Any, session_id: str, after_seq: int) -> dict[str, Any]:
    """`session.get` page by page; returns the last page's session info and all messages."""
    messages: list[Any] = []
    while True:
        res = await client.call(
            "session.get", {"id": session_id, "after_seq": after_seq, "limit": GET_PAGE}
        )
        messages += res["messages"]
        if not res["messages"] or not res.get("more"):
            return {"session": res["session"], "messages": messages}
        after_seq = res["messages"][-1]["seq"]


async def resume(
    client: Any, session_id: str, *, cache: CacheStorage | None = None, model: str = ""
) -> SessionSync:
    """Load a session from the bridge (only what the cache lacks) into a ready `SessionSync`.

    The bridge is authoritative for messages; todos, the change journal and seen hashes come
    from the cache when this device has one (another device resumes with messages only).
    """
    cached = cache.load(session_id) if cache is not None else None
    session = Session(id=session_id)
    have = 0
    pending: list[Message] = []  # cached but never acknowledged (the client died before)
    if cached is not None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            session = Session.from_json(cached)
            have = min(int(cached.get("synced") or 0), len(session.messages))
            pending = session.messages[have:]
            session.messages = session.messages[:have]
    try:
        res = await _get_all(client, session_id, have - 1)
    except RpcError as exc:
        if exc.code != ENOENT or cached is None or cached.get("synced") is not None:
            raise
        # Never saved on the bridge (it was unreachable all along): create it at the next push.
        session.messages.extend(pending)
        return SessionSync(client, session, cache=cache, model=model, synced=None)
    info = res["session"]
    if info.get("messages", 0) < have:  # the bridge has less than the cache thinks: refetch
        res = await _get_all(client, session_id, -1)
        session.messages, have, pending = [], 0, []
    fetched = [Message.from_json(item["message"]) for item in res["messages"]]
    session.messages.extend(fetched)
    synced = len(session.messages)
    # Pending messages whose append landed (reply lost) come back from the bridge; the rest are
    # kept and sent with the next push, unless another device wrote there in the meantime.
    head = [m.to_json() for m in pending[: len(fetched)]]
    if head == [m.to_json() for m in fetched]:
        session.messages.extend(pending[len(fetched) :])
    session.title = info.get("title") or session.title
    session.created_at = info.get("created_at") or session.created_at
    usage = dict(info.get("usage") or {})
    cost = usage.pop("cost_usd", 0.0)
    with contextlib.suppress(TypeError):
        session.usage = type(session.usage)(**usage)
        session.cost_usd = float(cost) if isinstance(cost, (int, float)) else None
    sync = SessionSync(
        client, session, cache=cache, model=model or info.get("model", ""), synced=synced
    )
    sync._save_cache()
    return sync


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


async def write_once(
    client: Any, path: str, content: str, if_match: str, *, attempts: int = 3
) -> dict[str, Any]:
    """`fs.write` with `if_match`, retried on a dropped connection, applied at most once.

    `client` may be a callable returning the current client (it changes on reconnect). An
    `ECONFLICT` whose `current_sha256` is the hash of `content` means an earlier attempt was
    applied: that is success (`"replayed": True`). Any other conflict is raised.
    """
    want = sha256_hex(content)
    last: BaseException | None = None
    for _ in range(attempts):
        c = client() if callable(client) and not hasattr(client, "call") else client
        try:
            return dict(
                await c.call("fs.write", {"path": path, "content": content, "if_match": if_match})
            )
        except RpcError as exc:
            if exc.code == ECONFLICT and exc.details.get("current_sha256") == want:
                return {"sha256": want, "size": len(content.encode()), "created": False,
                        "replayed": True}  # fmt: skip
            raise
        except _transient_errors() as exc:
            last = exc
    assert last is not None
    raise last
