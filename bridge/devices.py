"""Paired devices and outstanding pairing secrets, in SQLite in the state dir.

SQLite (WAL) lets `kite pair` and `kite devices revoke` run as separate processes while a bridge
serves on the same state dir: the bridge reads secrets at handshake time and polls for revocations.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id          TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    paired_at   REAL NOT NULL,
    last_seen   REAL,
    revoked_at  REAL
);
CREATE TABLE IF NOT EXISTS pairing_secrets (
    secret      BLOB PRIMARY KEY,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
"""

_SELECT = "SELECT id, public_key, name, paired_at, last_seen, revoked_at FROM devices "
DEFAULT_PAIR_TTL_S = 600
MAX_NAME = 64


def device_id(public_key: bytes) -> str:
    """A short stable id a person can type: base32 of the key's SHA-256, 10 characters."""
    return base64.b32encode(hashlib.sha256(public_key).digest()).decode()[:10].lower()


def clean_name(name: object) -> str:
    text = name if isinstance(name, str) else ""
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C").strip()
    return text[:MAX_NAME] or "unnamed device"


@dataclass(frozen=True)
class Device:
    id: str
    public_key: bytes
    name: str
    paired_at: float
    last_seen: float | None
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "public_key": base64.urlsafe_b64encode(self.public_key).decode(),
            "paired_at": self.paired_at,
            "last_seen": self.last_seen,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
        }


class Registry:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.sqlite3"
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        os.chmod(self.path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- pairing secrets -------------------------------------------------------------------

    def new_pairing_secret(self, ttl_s: float = DEFAULT_PAIR_TTL_S) -> tuple[bytes, float]:
        secret = os.urandom(32)
        now = time.time()
        self.db.execute(
            "INSERT INTO pairing_secrets (secret, created_at, expires_at) VALUES (?, ?, ?)",
            (secret, now, now + ttl_s),
        )
        self.db.execute("DELETE FROM pairing_secrets WHERE expires_at <= ?", (now,))
        return secret, now + ttl_s

    def active_secrets(self) -> list[bytes]:
        rows = self.db.execute(
            "SELECT secret FROM pairing_secrets WHERE expires_at > ? ORDER BY created_at DESC",
            (time.time(),),
        )
        return [bytes(r[0]) for r in rows]

    def consume_secret(self, secret: bytes) -> bool:
        """Use a secret up; True for exactly one caller, and only before it expires."""
        cur = self.db.execute(
            "DELETE FROM pairing_secrets WHERE secret = ? AND expires_at > ?", (secret, time.time())
        )
        return cur.rowcount == 1

    # -- devices ---------------------------------------------------------------------------

    def register(self, public_key: bytes, name: object) -> Device:
        now = time.time()
        did = device_id(public_key)
        self.db.execute(
            """INSERT INTO devices (id, public_key, name, paired_at, last_seen, revoked_at)
               VALUES (?, ?, ?, ?, ?, NULL)
               ON CONFLICT(public_key) DO UPDATE SET
                   name = excluded.name, paired_at = excluded.paired_at, revoked_at = NULL""",
            (did, public_key, clean_name(name), now, now),
        )
        dev = self.get(did)
        assert dev is not None
        return dev

    def _row(self, row: tuple) -> Device:
        return Device(row[0], bytes(row[1]), row[2], row[3], row[4], row[5])

    def get(self, did: str) -> Device | None:
        row = self.db.execute(
            _SELECT + "WHERE id = ?",
            (did,),
        ).fetchone()
        return self._row(row) if row else None

    def by_key(self, public_key: bytes) -> Device | None:
        row = self.db.execute(
            _SELECT + "WHERE public_key = ?",
            (public_key,),
        ).fetchone()
        return self._row(row) if row else None

    def list(self) -> list[Device]:
        rows = self.db.execute(_SELECT + "ORDER BY paired_at")
        return [self._row(r) for r in rows]

    def touch(self, did: str) -> None:
        self.db.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (time.time(), did))

    def revoke(self, did: str) -> Device | None:
        """Revoke by id (or unique id prefix); None when no such device."""
        matches = [d for d in self.list() if d.id == did or d.id.startswith(did.lower())]
        if len(matches) != 1:
            return None
        self.db.execute(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            (time.time(), matches[0].id),
        )
        return self.get(matches[0].id)

    def revoked_ids(self) -> set[str]:
        return {
            r[0] for r in self.db.execute("SELECT id FROM devices WHERE revoked_at IS NOT NULL")
        }

    def data_version(self) -> int:
        """Changes when another connection (another process) commits: cheap revocation polling."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])
