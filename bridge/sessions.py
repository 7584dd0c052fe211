"""Conversation history on the bridge: SQLite in `<state dir>/sessions.sqlite3` (0600).

Devices append messages with explicit sequence numbers, so a retried append (after a dropped
connection, or a bridge restart that lost the reply) is harmless: a message already stored with
identical content is a no-op success; a different one under the same `seq` means the device's
copy is stale and gets `ECONFLICT` (it must `session.get` first). Each append is one transaction
with `synchronous=FULL` in WAL mode, so a `kill -9` of the bridge leaves whole messages only.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from agent_core.rpc.errors import ECONFLICT, EINVAL, ENOENT, RpcError

DB_FILE = "sessions.sqlite3"
MAX_TITLE = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    workspace TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    device_id TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    usage TEXT NOT NULL DEFAULT '{}',
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (deleted, updated_at);
"""


def canonical(message: Any) -> str:
    """One spelling per message, so a retried append compares equal byte for byte."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class SessionStore:
    """The session database of one state dir. Opened lazily; one connection, used from the
    bridge's event loop thread (calls are short and bounded)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / DB_FILE
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            # Create the file 0600 before SQLite does (it would use the umask).
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.chmod(f"{self.path}{suffix}", 0o600)
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reads ---------------------------------------------------------------------------

    def _row(self, session_id: str) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT id, title, workspace, created_at, updated_at, device_id, model, usage "
            "FROM sessions WHERE id = ? AND deleted = 0",
            (session_id,),
        ).fetchone()
        if row is None:
            raise RpcError(ENOENT, f"no such session: {session_id}")
        count = self._next_seq(session_id)
        return {
            "id": row[0],
            "title": row[1],
            "workspace": row[2],
            "created_at": row[3],
            "updated_at": row[4],
            "device_id": row[5],
            "model": row[6],
            "usage": json.loads(row[7] or "{}"),
            "messages": count,
        }

    def _next_seq(self, session_id: str) -> int:
        row = self.db.execute(
            "SELECT MAX(seq) FROM messages WHERE session_id = ?", (session_id,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def info(self, session_id: str) -> dict[str, Any]:
        return self._row(session_id)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first, deleted ones left out."""
        rows = self.db.execute(
            "SELECT s.id, s.title, s.updated_at, s.model, s.usage, "
            "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) "
            "FROM sessions s WHERE s.deleted = 0 ORDER BY s.updated_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {
                "id": r[0],
                "title": r[1],
                "updated_at": r[2],
                "model": r[3],
                "usage": json.loads(r[4] or "{}"),
                "messages": r[5],
            }
            for r in rows
        ]

    def get(
        self, session_id: str, after_seq: int = -1, limit: int = -1
    ) -> tuple[dict[str, Any], list[Any]]:
        """The session and its messages with `seq > after_seq`, in order (at most `limit`)."""
        info = self._row(session_id)
        rows = self.db.execute(
            "SELECT seq, json FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (session_id, after_seq, limit),
        ).fetchall()
        return info, [{"seq": r[0], "message": json.loads(r[1])} for r in rows]

    # -- writes --------------------------------------------------------------------------

    def create(
        self,
        session_id: str | None = None,
        *,
        title: str = "",
        model: str = "",
        workspace: str = "",
        device_id: str = "",
    ) -> dict[str, Any]:
        """Create a session; creating an id that exists returns it (a retried create)."""
        sid = session_id or uuid.uuid4().hex
        now = time.time()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT deleted FROM sessions WHERE id = ?", (sid,)).fetchone()
            if row is not None and row[0]:
                raise RpcError(ECONFLICT, f"session {sid} was deleted")
            if row is None:
                db.execute(
                    "INSERT INTO sessions (id, title, workspace, created_at, updated_at, "
                    "device_id, model) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (sid, title[:MAX_TITLE], workspace, now, now, device_id, model),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self._row(sid)

    def append(
        self,
        session_id: str,
        messages: list[tuple[int, Any]],
        *,
        usage: dict[str, Any] | None = None,
        title: str | None = None,
    ) -> int:
        """Store `(seq, message)` pairs in one transaction; returns the next free seq.

        Existing seqs with identical content are skipped (retries); a different content under
        an existing seq, or a gap after the last stored one, is `ECONFLICT`.
        """
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT title FROM sessions WHERE id = ? AND deleted = 0", (session_id,)
            ).fetchone()
            if row is None:
                raise RpcError(ENOENT, f"no such session: {session_id}")
            next_seq = self._next_seq(session_id)
            for seq, message in sorted(messages, key=lambda m: m[0]):
                text = canonical(message)
                if seq < next_seq:
                    have = db.execute(
                        "SELECT json FROM messages WHERE session_id = ? AND seq = ?",
                        (session_id, seq),
                    ).fetchone()
                    if have is not None and have[0] == text:
                        continue
                    raise RpcError(
                        ECONFLICT,
                        f"message {seq} of session {session_id} differs: fetch the session",
                        next_seq=next_seq,
                        seq=seq,
                    )
                if seq > next_seq:
                    raise RpcError(
                        ECONFLICT,
                        f"message {seq} would leave a gap: the session has {next_seq}",
                        next_seq=next_seq,
                        seq=seq,
                    )
                db.execute(
                    "INSERT INTO messages (session_id, seq, json) VALUES (?, ?, ?)",
                    (session_id, seq, text),
                )
                next_seq += 1
            sets, params = ["updated_at = ?"], [time.time()]
            if usage is not None:
                sets.append("usage = ?")
                params.append(canonical(usage))
            if title and not row[0]:
                sets.append("title = ?")
                params.append(title[:MAX_TITLE])
            db.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?", (*params, session_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return next_seq

    def rename(self, session_id: str, title: str) -> dict[str, Any]:
        cur = self.db.execute(
            "UPDATE sessions SET title = ?, updated_at = ? WHERE id = ? AND deleted = 0",
            (title[:MAX_TITLE], time.time(), session_id),
        )
        if cur.rowcount == 0:
            raise RpcError(ENOENT, f"no such session: {session_id}")
        return self._row(session_id)

    def delete(self, session_id: str) -> None:
        """Marks the session deleted and drops its messages (the id stays taken, so a device
        retrying an old append cannot resurrect it)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "UPDATE sessions SET deleted = 1, updated_at = ? WHERE id = ? AND deleted = 0",
                (time.time(), session_id),
            )
            if cur.rowcount == 0:
                raise RpcError(ENOENT, f"no such session: {session_id}")
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def check_id(value: Any) -> str:
    """Session ids are client-generated: short, printable, no surprises in logs or paths."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise RpcError(EINVAL, "session id must be a string of 1 to 64 characters")
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise RpcError(EINVAL, "session id may hold only letters, digits, '-' and '_'")
    return value
