"""The bridge's state directory: host key, registry database, runtime info of a running bridge.

Resolution order: `--state-dir`, then `$KITE_STATE_DIR`, then the platform's user data dir.
The directory is created 0700 and secret files 0600: the host key is the bridge's identity.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs


class StateDirError(Exception):
    """The state directory cannot be used (message is shown to the user as is)."""


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("KITE_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("kite", appauthor=False))


def user_config_dir() -> Path:
    return Path(platformdirs.user_config_dir("kite", appauthor=False))


def ensure_state_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StateDirError(f"state directory {path} is not writable: {exc.strerror}") from exc
    return path


def write_secret_file(path: Path, data: bytes) -> None:
    """Atomically create or replace a 0600 file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_host_key(state_dir: Path) -> bytes:
    """Return the 32 private bytes of the host's X25519 static key, creating it once."""
    path = state_dir / "host_key"
    try:
        raw = base64.b64decode(path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raw = os.urandom(32)
        write_secret_file(path, base64.b64encode(raw) + b"\n")
        return raw
    except (OSError, ValueError) as exc:
        raise StateDirError(f"host key {path} is unreadable or corrupt: {exc}") from exc
    if len(raw) != 32:
        raise StateDirError(f"host key {path} is corrupt (expected 32 bytes)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise StateDirError(
            f"host key {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    return raw


RUNTIME_FILE = "bridge.json"


def write_runtime_info(state_dir: Path, info: dict[str, Any]) -> None:
    """Tell other `kite` commands on this state dir where the running bridge is."""
    write_secret_file(state_dir / RUNTIME_FILE, json.dumps(info, indent=2).encode())


def read_runtime_info(state_dir: Path) -> dict[str, Any] | None:
    """The running bridge's info, or None when none is running (stale files are ignored)."""
    try:
        info = json.loads((state_dir / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid") if isinstance(info, dict) else None
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


def clear_runtime_info(state_dir: Path) -> None:
    with contextlib.suppress(OSError):
        info = json.loads((state_dir / RUNTIME_FILE).read_text())
        if info.get("pid") == os.getpid():
            (state_dir / RUNTIME_FILE).unlink()
