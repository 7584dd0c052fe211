"""The audit log: one JSON line per op (and per connection attempt), on the host, mode 0600.

Each line is written with a single `os.write` on an `O_APPEND` fd, so concurrent writers (threads,
or a second bridge on the same state directory) never interleave inside a line. Entries carry
`ts` (UTC, ISO 8601 with milliseconds, added here), `device`, `op`, `path` or `command`,
`outcome` ("ok" or an error code) and `duration_ms`, plus whatever else the caller adds.

File contents are never logged: keys that carry data (`content`, `data`, `payload`, `stdin`,
`chunk`) are dropped, and long strings are shortened so one line stays small.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

# Keys whose values are file or stream contents: never written to the log.
CONTENT_KEYS = frozenset({"content", "data", "payload", "stdin", "chunk", "chunks_data"})
MAX_STRING = 2048  # characters kept of any one string value
MAX_ITEMS = 64  # items kept of any one list


def _clean(value: Any, depth: int = 0) -> Any:
    """JSON-safe, size-bounded copy of a value."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return value[:MAX_STRING] + f"…[{len(value) - MAX_STRING} more chars]"
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if depth >= 4:
        return "<nested>"
    if isinstance(value, dict):
        return {
            str(k): _clean(v, depth + 1) for k, v in value.items() if str(k) not in CONTENT_KEYS
        }
    if isinstance(value, (list, tuple)):
        items = [_clean(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"…[{len(value) - MAX_ITEMS} more]")
        return items
    return _clean(str(value), depth)


def _make_encode() -> Any:
    """Compact JSON with `default=str`; the C encoder is built once, not per line."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - a Python without the _json accelerator
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
    # markers=None: no cycle check, which `_clean` makes moot (it cuts nesting at depth 4),
    # and no state left behind by a failed call.
    encode = make(None, str, json.encoder.c_encode_basestring, None, ":", ",", False, False, True)
    join = "".join
    return lambda obj: join(encode(obj, 0))


_encode = _make_encode()
_PLAIN = (int, float, bool)
_second = -1
_second_text = ""


def _timestamp() -> str:
    """`ts` for now; the formatted second is cached (strftime is most of an entry's cost)."""
    global _second, _second_text
    now = time.time()
    sec = int(now)
    if sec != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _second = sec
    return f"{_second_text}{int((now - sec) * 1000):03d}Z"


def _clean_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """`_clean` of a top-level entry, with a fast path for the usual flat, short values."""
    out: dict[str, Any] = {}
    for k, v in entry.items():
        key = k if type(k) is str else str(k)
        if key in CONTENT_KEYS:
            continue
        if v is None or type(v) in _PLAIN or (type(v) is str and len(v) <= MAX_STRING):
            out[key] = v
        else:
            out[key] = _clean(v, 1)
    return out


def format_entry(entry: dict[str, Any], now: datetime | None = None) -> bytes:
    """One audit line (with the trailing newline) for an entry."""
    if now is None:
        ts = _timestamp()
    else:
        ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    line: dict[str, Any] = {"ts": ts}
    line.update(_clean_entry(entry))
    if "ts" in entry and isinstance(entry["ts"], str):
        line["ts"] = entry["ts"]
    return _encode(line).encode("utf-8", "backslashreplace") + b"\n"


class AuditLog:
    """Append-only JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(
            self.path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        os.fchmod(self._fd, 0o600)  # an older file may have been created with looser bits
        self._closed = threading.Event()

    def record(self, entry: dict[str, Any]) -> None:
        """Append one entry. Never raises for a closed log (late ops after shutdown)."""
        if self._closed.is_set():
            return
        line = format_entry(entry)
        try:
            n = os.write(self._fd, line)
        except OSError:
            if self._closed.is_set():
                return
            raise
        if n != len(line):  # pragma: no cover - a short write on a regular file: disk full
            raise OSError("short write to the audit log")

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            os.close(self._fd)
