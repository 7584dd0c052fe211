"""Snapshots: the content a write, delete or move is about to replace or remove, kept for undo.

Layout under `<state_dir>/snapshots/<first 16 hex of sha256(real workspace root)>/`:

* `blobs/<sha256[:2]>/<sha256>` — content-addressed, written atomically (temp file in the same
  directory, fsync, rename), so a blob is either absent or complete, and equal content is stored
  once;
* `index.sqlite3` — an append-only table `snapshots(seq, time, device_id, request_id, op, path,
  prev_sha256, new_sha256, extra)`: `prev_sha256` is NULL when the file did not exist before,
  `new_sha256` NULL when the op removed it; `extra` is optional JSON (e.g. `{"to": ...}` for a
  move, `{"type": "dir"}` for a directory). UPDATE and DELETE are refused by triggers.

A blob is stored before the index row that names it and before the change itself, so after a crash
the index never points at a missing blob.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    device_id TEXT NOT NULL,
    request_id INTEGER,
    op TEXT NOT NULL,
    path TEXT NOT NULL,
    prev_sha256 TEXT,
    new_sha256 TEXT,
    extra TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_path ON snapshots(path, seq);
CREATE TRIGGER IF NOT EXISTS snapshots_no_update BEFORE UPDATE ON snapshots
BEGIN SELECT RAISE(ABORT, 'snapshot index is append-only'); END;
CREATE TRIGGER IF NOT EXISTS snapshots_no_delete BEFORE DELETE ON snapshots
BEGIN SELECT RAISE(ABORT, 'snapshot index is append-only'); END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_READ_BLOCK = 1024 * 1024
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class SnapshotEntry:
    seq: int
    time: float
    device_id: str
    request_id: int | None
    op: str
    path: str
    prev_sha256: str | None
    new_sha256: str | None
    extra: dict[str, Any] | None


def workspace_key(workspace_root: Path) -> str:
    """Directory name for one workspace: a hash of its real path (no host path on disk names)."""
    real = os.path.realpath(workspace_root)
    return hashlib.sha256(os.fsencode(real)).hexdigest()[:16]


class SnapshotStore:
    """Blob store + append-only index for one workspace. Safe to use from several threads."""

    def __init__(self, state_dir: Path, workspace_root: Path) -> None:
        self.dir = Path(state_dir) / "snapshots" / workspace_key(workspace_root)
        self.blobs_dir = self.dir / "blobs"
        self.blobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.dir.parent, self.dir, self.blobs_dir):
            os.chmod(d, 0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.dir / "index.sqlite3", check_same_thread=False, isolation_level=None
        )
        os.chmod(self.dir / "index.sqlite3", 0o600)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('workspace_root', ?)",
                (os.path.realpath(workspace_root),),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- blobs ----------------------------------------------------------------------------

    def _blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise ValueError("not a lowercase sha256 hex digest")
        return self.blobs_dir / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self._blob_path(sha256).exists()

    def put_blob(self, data: bytes) -> str:
        """Store bytes; returns their sha256."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            self._write_blob(sha, [data])
        return sha

    def put_blob_fd(self, fd: int) -> str:
        """Store the whole content of an open regular file (read with pread from offset 0)."""
        h = hashlib.sha256()
        tmp = self._tmp_path()
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            pos = 0
            size = os.fstat(fd).st_size
            while True:
                # ask for what is left (+1 to see EOF): a 1 MiB request costs a 1 MiB allocation
                block = os.pread(fd, min(_READ_BLOCK, max(size - pos + 1, 4096)), pos)
                if not block:
                    break
                pos += len(block)
                h.update(block)
                _write_all(out, block)
            os.fsync(out)
        except BaseException:
            os.close(out)
            _unlink_quietly(tmp)
            raise
        os.close(out)
        sha = h.hexdigest()
        self._publish(tmp, sha)
        return sha

    def blob(self, sha256: str) -> bytes:
        """The content stored under a sha256 (KeyError if this store does not have it)."""
        try:
            return self._blob_path(sha256).read_bytes()
        except FileNotFoundError:
            raise KeyError(sha256) from None

    def _tmp_path(self) -> Path:
        return self.blobs_dir / f".tmp-{secrets.token_hex(8)}"

    def _write_blob(self, sha: str, pieces: list[bytes]) -> None:
        tmp = self._tmp_path()
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for piece in pieces:
                _write_all(out, piece)
            os.fsync(out)
        except BaseException:
            os.close(out)
            _unlink_quietly(tmp)
            raise
        os.close(out)
        self._publish(tmp, sha)

    def _publish(self, tmp: Path, sha: str) -> None:
        final = self._blob_path(sha)
        try:
            final.parent.mkdir(mode=0o700, exist_ok=True)
            if final.exists():
                _unlink_quietly(tmp)
                return
            os.replace(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        dfd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- index ----------------------------------------------------------------------------

    def record(
        self,
        *,
        op: str,
        path: str,
        prev_sha256: str | None,
        new_sha256: str | None,
        device_id: str,
        request_id: int | None = None,
        extra: dict[str, Any] | None = None,
        when: float | None = None,
    ) -> int:
        """Append one row; returns its seq. Store the `prev_sha256` blob first."""
        for sha in (prev_sha256,):
            if sha is not None and not self.has_blob(sha):
                raise ValueError(f"blob {sha} must be stored before it is recorded")
        row = (
            time.time() if when is None else when,
            device_id,
            request_id,
            op,
            path,
            prev_sha256,
            new_sha256,
            json.dumps(extra, separators=(",", ":"), sort_keys=True) if extra else None,
        )
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO snapshots(time, device_id, request_id, op, path, prev_sha256,"
                " new_sha256, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return int(cur.lastrowid or 0)

    def history(self, path: str | None = None, limit: int = 100) -> list[SnapshotEntry]:
        """Newest first; all paths, or one path's rows."""
        sql = (
            "SELECT seq, time, device_id, request_id, op, path, prev_sha256, new_sha256, extra"
            " FROM snapshots"
        )
        params: tuple[Any, ...] = ()
        if path is not None:
            sql += " WHERE path = ?"
            params = (path,)
        sql += " ORDER BY seq DESC LIMIT ?"
        params += (max(0, int(limit)),)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [
            SnapshotEntry(
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]) if r[8] else None
            )
            for r in rows
        ]


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
