"""A plugin's scratch directory on disk, served through the in-memory WASI (wasi.py) with a cap.

wasmtime's own WASI writes straight to the disk and has no size limit, so a plugin could fill
the host's disk within its time limit. Instead every engine serves the plugin's files from its
`MemFS`, whose byte cap (`Limits.scratch_bytes`) makes writes past it fail with ENOSPC — the
same error, at the same point, in the browser and on the host. On the host the directory is
loaded into that file system when the plugin starts and written back after every call: changed
files atomically (temporary file + rename), removed ones deleted. Symbolic links and special
files on disk are neither loaded nor followed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from agent_core.plugins.wasi import MemFS, _Node

Fingerprint = tuple[int, int]  # (length, crc32)


def _fingerprint(data: bytearray) -> Fingerprint:
    return len(data), zlib.crc32(data)


class DiskMirror:
    """The preopened host directories (host dir -> guest path) mirrored in `fs`."""

    def __init__(self, fs: MemFS, preopens: Sequence[tuple[str, str]]) -> None:
        self.fs = fs
        self.pairs = [(Path(h), g) for h, g in preopens if h]
        self._saved: dict[tuple[int, str], Fingerprint | None] = {}  # None: a directory

    def load(self) -> None:
        """Read every preopened directory into the file system (once, before the first call)."""
        for i, (host, guest) in enumerate(self.pairs):
            self._load_dir(i, host, self.fs.directory(guest), "")

    def _load_dir(self, i: int, host: Path, node: _Node, rel: str) -> None:
        assert node.children is not None
        try:
            entries = sorted(os.scandir(host), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                child = node.children.setdefault(entry.name, self.fs._new(directory=True))
                self._saved[(i, sub)] = None
                self._load_dir(i, Path(entry.path), child, sub)
            elif entry.is_file(follow_symlinks=False):
                try:
                    data = Path(entry.path).read_bytes()
                except OSError:
                    continue
                child = self.fs._new(directory=False)
                child.data = bytearray(data)
                node.children[entry.name] = child
                self._saved[(i, sub)] = _fingerprint(child.data)

    def sync(self) -> None:
        """Write what changed since the last load or sync back to the disk."""
        now: dict[tuple[int, str], Fingerprint | None] = {}
        for i, (_host, guest) in enumerate(self.pairs):
            self._walk(i, self.fs.directory(guest), "", now)
        # Removed first (deepest paths first), so a file may replace a directory and vice versa.
        for key in sorted(set(self._saved) - set(now), key=lambda k: -len(k[1])):
            self._remove(self.pairs[key[0]][0] / key[1])
        for key, fp in sorted(now.items(), key=lambda kv: len(kv[0][1])):
            if self._saved.get(key, "absent") == fp:
                continue
            host = self.pairs[key[0]][0]
            target = host / key[1]
            if fp is None:
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    self._remove(target)
                target.mkdir(exist_ok=True)
            else:
                node = self._node(key)
                if node is not None:
                    self._write(target, bytes(node.data))
        self._saved = now

    def _walk(
        self, i: int, node: _Node, rel: str, out: dict[tuple[int, str], Fingerprint | None]
    ) -> None:
        assert node.children is not None
        for name, child in node.children.items():
            sub = f"{rel}/{name}" if rel else name
            if child.is_dir:
                out[(i, sub)] = None
                self._walk(i, child, sub, out)
            else:
                out[(i, sub)] = _fingerprint(child.data)

    def _node(self, key: tuple[int, str]) -> _Node | None:
        node = self.fs.directory(self.pairs[key[0]][1])
        for part in key[1].split("/"):
            if node.children is None or part not in node.children:
                return None
            node = node.children[part]
        return node

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    @staticmethod
    def _write(target: Path, data: bytes) -> None:
        if target.is_symlink() or target.is_dir():
            DiskMirror._remove(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".kite-scratch-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
