"""WASI preview 1 over an in-memory file system, for engines without WASI (the browser).

A plugin's files live in a `MemFS` that belongs to the plugin (it survives instance rebuilds), and
only the directories of the manifest's `allowed_paths` are visible, under their guest paths: the
browser counterpart of the host's scratch directory. Paths are resolved against the preopened
directory, `..` may not leave it and absolute paths are refused (EPERM, as wasmtime's WASI does).
No environment, no arguments, stdin is empty, stdout/stderr go to the plugin's log; clocks and
randomness are real. Unsupported calls return ENOSYS. The file system has a size cap (ENOSPC).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_core.plugins.engine import WasiExit
from agent_core.plugins.wasmbin import FuncType

ESUCCESS, EBADF, EEXIST, EINVAL, EISDIR, ENOENT = 0, 8, 20, 28, 31, 44
ENOSPC, ENOSYS, ENOTDIR, ENOTEMPTY, EPERM, ESPIPE, EFAULT = 51, 52, 54, 55, 63, 70, 21
FT_DIR, FT_FILE, FT_CHAR = 3, 4, 2
O_CREAT, O_DIRECTORY, O_EXCL, O_TRUNC = 1, 2, 4, 8
FD_APPEND = 1
ALL_RIGHTS = (1 << 30) - 1


class Memory(Protocol):
    """The guest's linear memory."""

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


@dataclass
class _Node:
    ino: int
    children: dict[str, _Node] | None = None  # a directory
    data: bytearray = field(default_factory=bytearray)  # a file
    mtime: int = 0

    @property
    def is_dir(self) -> bool:
        return self.children is not None


class MemFS:
    """A plugin's private in-memory tree; `max_bytes` caps the sum of file sizes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._next_ino = 1
        self.root = self._new(directory=True)

    def _new(self, directory: bool) -> _Node:
        self._next_ino += 1
        return _Node(self._next_ino, {} if directory else None, mtime=time.time_ns())

    def used(self) -> int:
        def size(n: _Node) -> int:
            if n.children is None:
                return len(n.data)
            return sum(size(c) for c in n.children.values())

        return size(self.root)

    def directory(self, path: str) -> _Node:
        """The directory at `path` (from the root), created if needed."""
        node = self.root
        for part in [p for p in path.split("/") if p]:
            assert node.children is not None
            node = node.children.setdefault(part, self._new(directory=True))
        return node


@dataclass
class _Fd:
    node: _Node
    preopen: str | None = None  # guest path, for preopened directories
    pos: int = 0
    append: bool = False
    stream: Callable[[bytes], None] | None = None  # stdout / stderr


class WasiShim:
    """The `wasi_snapshot_preview1` functions, as host functions bound to one guest memory."""

    SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # noqa: RUF012
        "args_get": (("i32", "i32"), ("i32",)),
        "args_sizes_get": (("i32", "i32"), ("i32",)),
        "environ_get": (("i32", "i32"), ("i32",)),
        "environ_sizes_get": (("i32", "i32"), ("i32",)),
        "clock_res_get": (("i32", "i32"), ("i32",)),
        "clock_time_get": (("i32", "i64", "i32"), ("i32",)),
        "fd_advise": (("i32", "i64", "i64", "i32"), ("i32",)),
        "fd_allocate": (("i32", "i64", "i64"), ("i32",)),
        "fd_close": (("i32",), ("i32",)),
        "fd_datasync": (("i32",), ("i32",)),
        "fd_fdstat_get": (("i32", "i32"), ("i32",)),
        "fd_fdstat_set_flags": (("i32", "i32"), ("i32",)),
        "fd_fdstat_set_rights": (("i32", "i64", "i64"), ("i32",)),
        "fd_filestat_get": (("i32", "i32"), ("i32",)),
        "fd_filestat_set_size": (("i32", "i64"), ("i32",)),
        "fd_filestat_set_times": (("i32", "i64", "i64", "i32"), ("i32",)),
        "fd_pread": (("i32", "i32", "i32", "i64", "i32"), ("i32",)),
        "fd_prestat_get": (("i32", "i32"), ("i32",)),
        "fd_prestat_dir_name": (("i32", "i32", "i32"), ("i32",)),
        "fd_pwrite": (("i32", "i32", "i32", "i64", "i32"), ("i32",)),
        "fd_read": (("i32", "i32", "i32", "i32"), ("i32",)),
        "fd_readdir": (("i32", "i32", "i32", "i64", "i32"), ("i32",)),
        "fd_renumber": (("i32", "i32"), ("i32",)),
        "fd_seek": (("i32", "i64", "i32", "i32"), ("i32",)),
        "fd_sync": (("i32",), ("i32",)),
        "fd_tell": (("i32", "i32"), ("i32",)),
        "fd_write": (("i32", "i32", "i32", "i32"), ("i32",)),
        "path_create_directory": (("i32", "i32", "i32"), ("i32",)),
        "path_filestat_get": (("i32", "i32", "i32", "i32", "i32"), ("i32",)),
        "path_filestat_set_times": (("i32", "i32", "i32", "i32", "i64", "i64", "i32"), ("i32",)),
        "path_link": (("i32", "i32", "i32", "i32", "i32", "i32", "i32"), ("i32",)),
        "path_open": (
            ("i32", "i32", "i32", "i32", "i32", "i64", "i64", "i32", "i32"),
            ("i32",),
        ),
        "path_readlink": (("i32", "i32", "i32", "i32", "i32", "i32"), ("i32",)),
        "path_remove_directory": (("i32", "i32", "i32"), ("i32",)),
        "path_rename": (("i32", "i32", "i32", "i32", "i32", "i32"), ("i32",)),
        "path_symlink": (("i32", "i32", "i32", "i32", "i32"), ("i32",)),
        "path_unlink_file": (("i32", "i32", "i32"), ("i32",)),
        "poll_oneoff": (("i32", "i32", "i32", "i32"), ("i32",)),
        "proc_exit": (("i32",), ()),
        "proc_raise": (("i32",), ("i32",)),
        "random_get": (("i32", "i32"), ("i32",)),
        "sched_yield": ((), ("i32",)),
        "sock_accept": (("i32", "i32", "i32"), ("i32",)),
        "sock_recv": (("i32", "i32", "i32", "i32", "i32", "i32"), ("i32",)),
        "sock_send": (("i32", "i32", "i32", "i32", "i32"), ("i32",)),
        "sock_shutdown": (("i32", "i32"), ("i32",)),
    }

    def __init__(
        self,
        fs: MemFS,
        preopens: list[str],
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
    ) -> None:
        self.fs = fs
        self.mem: Memory | None = None
        self.fds: dict[int, _Fd | None] = {
            0: _Fd(_Node(0), stream=None),
            1: _Fd(_Node(0), stream=stdout or (lambda b: None)),
            2: _Fd(_Node(0), stream=stderr or (lambda b: None)),
        }
        for i, guest in enumerate(preopens):
            self.fds[3 + i] = _Fd(fs.directory(guest), preopen=guest)

    def bind(self, mem: Memory) -> None:
        self.mem = mem

    def functions(self, names: set[str]) -> list[tuple[str, FuncType, Callable[..., Any]]]:
        """(name, type, function) for each imported WASI name (unknown ones return ENOSYS)."""
        out = []
        for name in sorted(names):
            sig = self.SIGNATURES.get(name)
            if sig is None:
                continue
            impl = getattr(self, name, None) or self._enosys
            out.append((name, FuncType(*sig), impl))
        return out

    # -- helpers -----------------------------------------------------------------------------

    def _m(self) -> Memory:
        assert self.mem is not None, "WASI used before the instance was bound"
        return self.mem

    def _u32(self, ptr: int, value: int) -> None:
        self._m().write(ptr, struct.pack("<I", value & 0xFFFFFFFF))

    def _u64(self, ptr: int, value: int) -> None:
        self._m().write(ptr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def _iovecs(self, ptr: int, count: int) -> list[tuple[int, int]]:
        raw = self._m().read(ptr, 8 * count)
        return [struct.unpack_from("<II", raw, 8 * i) for i in range(count)]

    def _path(self, ptr: int, length: int) -> str:
        return self._m().read(ptr, length).decode("utf-8", "surrogateescape")

    def _fd(self, fd: int) -> _Fd | None:
        return self.fds.get(fd)

    def _resolve(self, dirfd: int, path: str) -> tuple[int, _Node | None, _Node | None, str]:
        """(errno, parent dir, node or None, last name) for `path` under `dirfd`."""
        base = self._fd(dirfd)
        if base is None or not base.node.is_dir:
            return EBADF, None, None, ""
        if path.startswith("/"):
            return EPERM, None, None, ""
        stack = [base.node]
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            return ESUCCESS, None, base.node, "."
        for part in parts[:-1]:
            if part == "..":
                if len(stack) == 1:
                    return EPERM, None, None, ""
                stack.pop()
                continue
            children = stack[-1].children
            assert children is not None
            nxt = children.get(part)
            if nxt is None:
                return ENOENT, None, None, ""
            if not nxt.is_dir:
                return ENOTDIR, None, None, ""
            stack.append(nxt)
        last = parts[-1]
        if last == "..":
            if len(stack) == 1:
                return EPERM, None, None, ""
            stack.pop()
            return ESUCCESS, None, stack[-1], "."
        parent = stack[-1]
        assert parent.children is not None
        return ESUCCESS, parent, parent.children.get(last), last

    def _new_fd(self, handle: _Fd) -> int:
        fd = 3
        while self.fds.get(fd) is not None:
            fd += 1
        self.fds[fd] = handle
        return fd

    def _enosys(self, *args: Any) -> int:
        return ENOSYS

    # -- args, environment, clocks, randomness, process --------------------------------------

    def args_sizes_get(self, argc: int, size: int) -> int:
        self._u32(argc, 0)
        self._u32(size, 0)
        return ESUCCESS

    environ_sizes_get = args_sizes_get

    def args_get(self, argv: int, buf: int) -> int:
        return ESUCCESS

    environ_get = args_get

    def clock_res_get(self, clock: int, ptr: int) -> int:
        self._u64(ptr, 1000)
        return ESUCCESS

    def clock_time_get(self, clock: int, precision: int, ptr: int) -> int:
        self._u64(ptr, time.time_ns() if clock == 0 else time.monotonic_ns())
        return ESUCCESS

    def random_get(self, ptr: int, length: int) -> int:
        self._m().write(ptr, os.urandom(length))
        return ESUCCESS

    def sched_yield(self) -> int:
        return ESUCCESS

    def proc_exit(self, code: int) -> None:
        raise WasiExit(code)

    # -- file descriptors ----------------------------------------------------------------------

    def fd_prestat_get(self, fd: int, ptr: int) -> int:
        h = self._fd(fd)
        if h is None or h.preopen is None:
            return EBADF
        self._m().write(ptr, struct.pack("<BxxxI", 0, len(h.preopen.encode())))
        return ESUCCESS

    def fd_prestat_dir_name(self, fd: int, ptr: int, length: int) -> int:
        h = self._fd(fd)
        if h is None or h.preopen is None:
            return EBADF
        self._m().write(ptr, h.preopen.encode()[:length])
        return ESUCCESS

    def fd_fdstat_get(self, fd: int, ptr: int) -> int:
        h = self._fd(fd)
        if h is None:
            return EBADF
        ftype = FT_CHAR if fd < 3 else FT_DIR if h.node.is_dir else FT_FILE
        flags = FD_APPEND if h.append else 0
        self._m().write(ptr, struct.pack("<BxHxxxxQQ", ftype, flags, ALL_RIGHTS, ALL_RIGHTS))
        return ESUCCESS

    def fd_fdstat_set_flags(self, fd: int, flags: int) -> int:
        h = self._fd(fd)
        if h is None:
            return EBADF
        h.append = bool(flags & FD_APPEND)
        return ESUCCESS

    def _filestat(self, node: _Node, ptr: int, char: bool = False) -> None:
        ftype = FT_CHAR if char else FT_DIR if node.is_dir else FT_FILE
        size = 0 if node.is_dir else len(node.data)
        t = node.mtime
        self._m().write(ptr, struct.pack("<QQBxxxxxxxQQQQQ", 1, node.ino, ftype, 1, size, t, t, t))

    def fd_filestat_get(self, fd: int, ptr: int) -> int:
        h = self._fd(fd)
        if h is None:
            return EBADF
        self._filestat(h.node, ptr, char=fd < 3)
        return ESUCCESS

    def fd_filestat_set_size(self, fd: int, size: int) -> int:
        h = self._fd(fd)
        if h is None or h.node.is_dir or fd < 3:
            return EBADF
        grow = size - len(h.node.data)
        if grow > 0 and self.fs.used() + grow > self.fs.max_bytes:
            return ENOSPC
        if grow > 0:
            h.node.data.extend(b"\0" * grow)
        else:
            del h.node.data[size:]
        return ESUCCESS

    def fd_close(self, fd: int) -> int:
        h = self._fd(fd)
        if h is None or fd < 3 or h.preopen is not None:
            return EBADF if h is None else ESUCCESS
        self.fds[fd] = None
        return ESUCCESS

    def fd_sync(self, fd: int) -> int:
        return ESUCCESS if self._fd(fd) is not None else EBADF

    fd_datasync = fd_sync

    def _read_into(self, h: _Fd, iovs: list[tuple[int, int]], pos: int) -> int:
        data = h.node.data
        total = 0
        for buf, length in iovs:
            chunk = bytes(data[pos + total : pos + total + length])
            self._m().write(buf, chunk)
            total += len(chunk)
            if len(chunk) < length:
                break
        return total

    def fd_read(self, fd: int, iovs: int, count: int, nread: int) -> int:
        h = self._fd(fd)
        if h is None or h.node.is_dir or fd in (1, 2):
            return EBADF
        n = 0 if fd == 0 else self._read_into(h, self._iovecs(iovs, count), h.pos)
        h.pos += n
        self._u32(nread, n)
        return ESUCCESS

    def fd_pread(self, fd: int, iovs: int, count: int, offset: int, nread: int) -> int:
        h = self._fd(fd)
        if h is None or h.node.is_dir or fd < 3:
            return EBADF if h is None or h.node.is_dir else ESPIPE
        self._u32(nread, self._read_into(h, self._iovecs(iovs, count), offset))
        return ESUCCESS

    def _gather(self, iovs: int, count: int) -> bytes:
        return b"".join(self._m().read(buf, length) for buf, length in self._iovecs(iovs, count))

    def _write_at(self, h: _Fd, data: bytes, pos: int) -> int:
        node = h.node
        grow = max(0, pos + len(data) - len(node.data))
        if grow and self.fs.used() + grow > self.fs.max_bytes:
            return -ENOSPC
        if pos > len(node.data):
            node.data.extend(b"\0" * (pos - len(node.data)))
        node.data[pos : pos + len(data)] = data
        node.mtime = time.time_ns()
        return len(data)

    def fd_write(self, fd: int, iovs: int, count: int, nwritten: int) -> int:
        h = self._fd(fd)
        if h is None or h.node.is_dir or fd == 0:
            return EBADF
        data = self._gather(iovs, count)
        if h.stream is not None:
            h.stream(data)
            n = len(data)
        else:
            pos = len(h.node.data) if h.append else h.pos
            n = self._write_at(h, data, pos)
            if n < 0:
                return -n
            h.pos = pos + n
        self._u32(nwritten, n)
        return ESUCCESS

    def fd_pwrite(self, fd: int, iovs: int, count: int, offset: int, nwritten: int) -> int:
        h = self._fd(fd)
        if h is None or h.node.is_dir or fd < 3:
            return EBADF if h is None or h.node.is_dir else ESPIPE
        n = self._write_at(h, self._gather(iovs, count), offset)
        if n < 0:
            return -n
        self._u32(nwritten, n)
        return ESUCCESS

    def fd_seek(self, fd: int, offset: int, whence: int, ptr: int) -> int:
        h = self._fd(fd)
        if h is None:
            return EBADF
        if fd < 3 or h.node.is_dir:
            return ESPIPE
        base = {0: 0, 1: h.pos, 2: len(h.node.data)}.get(whence)
        if base is None or base + offset < 0:
            return EINVAL
        h.pos = base + offset
        self._u64(ptr, h.pos)
        return ESUCCESS

    def fd_tell(self, fd: int, ptr: int) -> int:
        return self.fd_seek(fd, 0, 1, ptr)

    def fd_readdir(self, fd: int, buf: int, length: int, cookie: int, used: int) -> int:
        h = self._fd(fd)
        if h is None or not h.node.is_dir:
            return EBADF
        assert h.node.children is not None
        entries = [(".", h.node), *sorted(h.node.children.items())]
        out = bytearray()
        for i, (name, node) in enumerate(entries[cookie:], start=cookie):
            raw = name.encode()
            ftype = FT_DIR if node.is_dir else FT_FILE
            out += struct.pack("<QQIBxxx", i + 1, node.ino, len(raw), ftype) + raw
            if len(out) >= length:
                break
        self._m().write(buf, bytes(out[:length]))
        self._u32(used, min(len(out), length))
        return ESUCCESS

    # -- paths ----------------------------------------------------------------------------------

    def path_open(
        self,
        dirfd: int,
        dirflags: int,
        path_ptr: int,
        path_len: int,
        oflags: int,
        rights: int,
        rights_inh: int,
        fdflags: int,
        fd_ptr: int,
    ) -> int:
        err, parent, node, name = self._resolve(dirfd, self._path(path_ptr, path_len))
        if err:
            return err
        if node is None:
            if not oflags & O_CREAT or parent is None:
                return ENOENT
            assert parent.children is not None
            node = parent.children[name] = self.fs._new(directory=False)
        elif oflags & O_CREAT and oflags & O_EXCL:
            return EEXIST
        if oflags & O_DIRECTORY and not node.is_dir:
            return ENOTDIR
        if node.is_dir and oflags & O_TRUNC:
            return EISDIR
        if oflags & O_TRUNC:
            del node.data[:]
        self._u32(fd_ptr, self._new_fd(_Fd(node, append=bool(fdflags & FD_APPEND))))
        return ESUCCESS

    def path_filestat_get(self, dirfd: int, flags: int, ptr: int, length: int, out: int) -> int:
        err, _parent, node, _ = self._resolve(dirfd, self._path(ptr, length))
        if err:
            return err
        if node is None:
            return ENOENT
        self._filestat(node, out)
        return ESUCCESS

    def path_create_directory(self, dirfd: int, ptr: int, length: int) -> int:
        err, parent, node, name = self._resolve(dirfd, self._path(ptr, length))
        if err:
            return err
        if node is not None or parent is None:
            return EEXIST
        assert parent.children is not None
        parent.children[name] = self.fs._new(directory=True)
        return ESUCCESS

    def path_unlink_file(self, dirfd: int, ptr: int, length: int) -> int:
        err, parent, node, name = self._resolve(dirfd, self._path(ptr, length))
        if err:
            return err
        if node is None or parent is None:
            return ENOENT
        if node.is_dir:
            return EISDIR
        assert parent.children is not None
        del parent.children[name]
        return ESUCCESS

    def path_remove_directory(self, dirfd: int, ptr: int, length: int) -> int:
        err, parent, node, name = self._resolve(dirfd, self._path(ptr, length))
        if err:
            return err
        if node is None or parent is None:
            return ENOENT
        if not node.is_dir:
            return ENOTDIR
        if node.children:
            return ENOTEMPTY
        assert parent.children is not None
        del parent.children[name]
        return ESUCCESS

    def path_rename(self, fd: int, old: int, old_len: int, new_fd: int, new: int, n: int) -> int:
        err, oparent, node, oname = self._resolve(fd, self._path(old, old_len))
        if err:
            return err
        if node is None or oparent is None:
            return ENOENT
        err, nparent, target, nname = self._resolve(new_fd, self._path(new, n))
        if err:
            return err
        if nparent is None:
            return EINVAL
        if target is not None and target.is_dir != node.is_dir:
            return EISDIR if target.is_dir else ENOTDIR
        assert oparent.children is not None and nparent.children is not None
        del oparent.children[oname]
        nparent.children[nname] = node
        return ESUCCESS

    def path_filestat_set_times(self, *args: int) -> int:
        return ESUCCESS

    def path_symlink(self, *args: int) -> int:
        return EPERM

    def path_link(self, *args: int) -> int:
        return EPERM

    def path_readlink(self, *args: int) -> int:
        return EINVAL

    def fd_advise(self, *args: int) -> int:
        return ESUCCESS
