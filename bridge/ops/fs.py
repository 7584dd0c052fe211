"""`fs.*` ops: read, write, list, stat, glob, grep, delete, move, mkdir — all through the jail.

Every path goes through `bridge.jail.Workspace`; every change keeps the content it replaces in the
`SnapshotStore` first; every handler fills `ctx.audit` (path, bytes) and raises only `RpcError`s
whose messages name workspace paths, never host paths.

Results (paths in results are workspace-relative, after symlink resolution; sizes in bytes):

* fs.read → text: {content, sha256 (whole file), size (whole file), encoding: "utf-8",
  truncated (content is not the whole file), total_lines, + offset/length (actual, moved to
  UTF-8 character boundaries) for a byte range, + start_line/end_line (actual) for a line range};
  binary: chunks through ctx.send_chunk, then {size, sha256, binary: true, chunks,
  + offset/length for a range}.
* fs.write → {sha256, size, created}; ECONFLICT carries details {current_sha256: hex | null}.
* fs.list → {entries: [{name, type: file|dir|symlink|other, size, mtime}], truncated}.
* fs.stat → {path, type, size, mtime, mode: "0644" (octal string), + sha256 with hash: true};
  follows symlinks unless follow: false.
* fs.glob → {paths, truncated}: non-directories only, sorted, symlinks listed but not followed.
* fs.grep → {matches: [{path, line, text, + before/after with context}], truncated,
  files_searched}.
* fs.delete → {deleted: true, files, + snapshot_complete: false and unsaved_files when a big
  recursive delete went over the snapshot budget}.
* fs.move → {moved: true, from, to, overwritten}.
* fs.mkdir → {created}.

Blocking work (big reads, fsync, tree walks, grep) runs in a worker thread through `run_blocking`,
which, when the request is cancelled, still waits for the thread before the handler's `finally`
closes the fds the thread uses (an fd number closed under a running thread can be reused by an
unrelated open). Small reads stay inline: the 4 KiB read round trip is latency-critical.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import os
import re
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pathspec

from agent_core.rpc.errors import (
    EACCES,
    ECONFLICT,
    EEXIST,
    EINVAL,
    EISDIR,
    ENOENT,
    ENOTDIR,
    ETOOBIG,
    RpcError,
)
from agent_core.rpc.frames import MAX_CHUNK_PAYLOAD
from bridge.jail import DIR_FLAGS, Opened, Parent, Workspace, os_error
from bridge.ops.base import OpContext, arg_bool, arg_int, arg_str, op

# Binary chunk payload size: what one chunk frame can carry (agent_core.rpc.frames).
CHUNK_SIZE = MAX_CHUNK_PAYLOAD
INLINE_MAX = 64 * 1024  # reads below this stay on the event loop (no thread hop)
BLOCK = 1024 * 1024  # read block for big files
STREAM_BLOCK = 4 * BLOCK  # read block of a binary read streamed as chunks (see _blocks)
GREP_MAX_FILE = 4 * 1024 * 1024  # grep skips bigger files
BINARY_SNIFF = 8192  # a NUL in the first 8 KiB marks a file as binary
LINE_TEXT_MAX = 500  # characters of a matching line returned by grep
CONTEXT_MAX = 20  # grep context lines
GITIGNORE_MAX = 1024 * 1024
SNAPSHOT_DELETE_MAX_FILES = 10_000  # a recursive delete snapshots at most this many files ...
SNAPSHOT_DELETE_MAX_BYTES = 256 * 1024 * 1024  # ... and this many bytes, then deletes unsaved
_SHA_RE = re.compile(r"[0-9a-fA-F]{64}")
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

T = TypeVar("T")


# -- plumbing ----------------------------------------------------------------------------------


async def run_blocking(
    fn: Callable[..., T], *args: Any, cancel: threading.Event | None = None
) -> T:
    """Run `fn` in a worker thread. If the awaiting task is cancelled, set `cancel` (so a long
    loop can stop early), wait for the thread to finish, then re-raise the cancellation."""
    fut = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if cancel is not None:
            cancel.set()
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller gets
        raise


def _fs_op(name: str, *, mutates: bool = False, inline: bool = False) -> Callable[[Any], Any]:
    """Register a handler; map any stray OSError to an RpcError naming the workspace path."""

    def deco(fn: Any) -> Any:
        @functools.wraps(fn)
        async def wrapper(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
            if mutates and ctx.policy.read_only:  # defence in depth: the connection checks too
                raise RpcError(EACCES, "the host is in read-only mode")
            try:
                return await fn(ctx, args)
            except OSError as exc:
                raise os_error(exc, str(ctx.audit.get("path", ""))) from None

        op(name, mutates=mutates, inline=inline)(wrapper)
        return wrapper

    return deco


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _open_child_file(dir_fd: int, name: str, rel: str) -> tuple[int, os.stat_result]:
    """Open an existing regular, singly-linked file by name (no symlink), for hashing/snapshots."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise RpcError(EISDIR, f"is a directory: {rel}")
        if not stat.S_ISREG(st.st_mode):
            raise RpcError(EACCES, f"not a regular file: {rel}")
        if st.st_nlink > 1:
            raise RpcError(EACCES, f"file has several hard links; refused: {rel}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_size(expected: int, pos: int) -> int:
    """How much to ask `pread` for: the expected rest plus one byte (to see EOF), at least 4 KiB,
    at most BLOCK. Asking for a whole BLOCK for a small file costs a 1 MiB allocation (~30 µs)."""
    return min(BLOCK, max(expected - pos + 1, 4096))


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    pos = 0
    size = os.fstat(fd).st_size
    while block := os.pread(fd, read_size(size, pos), pos):
        h.update(block)
        pos += len(block)
    return h.hexdigest()


# -- fs.read -----------------------------------------------------------------------------------


class _TextSlicer:
    """Hashes a whole file and counts its lines while keeping only the requested range."""

    def __init__(
        self,
        byte_range: tuple[int, int | None] | None,
        line_range: tuple[int, int | None] | None,
        cap: int,
    ) -> None:
        self.h = hashlib.sha256()
        self.byte_range = byte_range
        self.line_range = line_range
        self.cap = cap
        self.pos = 0
        self.newlines = 0
        self.last = b""
        self.out = bytearray()

    def feed(self, block: bytes) -> None:
        self.h.update(block)
        n = len(block)
        count = block.count(b"\n")
        if self.byte_range is not None:
            start, end = self.byte_range
            # keep up to 4 bytes past the end to find a character boundary
            lo = max(start, self.pos)
            hi = self.pos + n if end is None else min(end + 4, self.pos + n)
            if lo < hi:
                self.out += block[lo - self.pos : hi - self.pos]
        elif self.line_range is not None:
            s, e = self.line_range
            first = self.newlines + 1  # line number of the block's first byte
            last = first + count  # line number of the bytes after its last newline
            if last >= s and (e is None or first <= e):
                a = 0 if first >= s else _nth_newline_end(block, s - first)
                b = n if e is None or last <= e else _nth_newline_end(block, e - first + 1)
                self.out += block[a:b]
        else:
            self.out += block
        self.newlines += count
        if n:
            self.last = block[-1:]
        self.pos += n
        if len(self.out) > self.cap + 4:
            raise RpcError(
                ETOOBIG, f"text over the host's limit of {self.cap} bytes; use a smaller range"
            )

    def result(self) -> dict[str, Any]:
        size = self.pos
        total = self.newlines + (1 if size and self.last != b"\n" else 0)
        out = self.out
        extra: dict[str, Any] = {}
        if self.byte_range is not None:
            start, end = self.byte_range
            start = min(start, size)
            stop = size if end is None else min(end, size)
            a, b = 0, max(0, stop - start)
            while a < min(3, b) and out[a] & 0xC0 == 0x80:  # do not start inside a character
                a += 1
            while b > a and b < len(out) and out[b] & 0xC0 == 0x80:  # nor end inside one
                b -= 1
            piece = bytes(out[a:b])
            extra = {"offset": start + a, "length": len(piece)}
        else:
            piece = bytes(out)
            if self.line_range is not None:
                s, e = self.line_range
                last_line = total if e is None else min(e, total)
                extra = {"start_line": s, "end_line": max(last_line, s - 1)}
        if len(piece) > self.cap:
            raise RpcError(
                ETOOBIG, f"text over the host's limit of {self.cap} bytes; use a smaller range"
            )
        try:
            content = piece.decode("utf-8")
        except UnicodeDecodeError:
            raise RpcError(
                EINVAL, 'file is not valid UTF-8 text; read it with "binary": true'
            ) from None
        return {
            "content": content,
            "sha256": self.h.hexdigest(),
            "size": size,
            "encoding": "utf-8",
            "truncated": len(piece) != size,
            "total_lines": total,
            **extra,
            "_bytes": len(piece),  # for the audit log; popped before the reply
        }


def _nth_newline_end(block: bytes, k: int) -> int:
    """Index just after the k-th (1-based) newline in block."""
    i = -1
    for _ in range(k):
        i = block.find(b"\n", i + 1)
    return i + 1


def _read_small_text(fd: int, size: int, cap: int) -> dict[str, Any] | None:
    """The common case, kept lean: a whole small file in one pread. None if it grew meanwhile."""
    data = os.pread(fd, size + 1, 0)
    if len(data) > size:
        return None
    if len(data) > cap:
        raise RpcError(ETOOBIG, f"text over the host's limit of {cap} bytes; use a range")
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RpcError(
            EINVAL, 'file is not valid UTF-8 text; read it with "binary": true'
        ) from None
    return {
        "content": content,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "encoding": "utf-8",
        "truncated": False,
        "total_lines": data.count(b"\n") + (1 if data and data[-1] != 10 else 0),
        "_bytes": len(data),
    }


def _read_text(
    fd: int,
    size: int,
    byte_range: tuple[int, int | None] | None,
    line_range: tuple[int, int | None] | None,
    cap: int,
    read_max: int,
) -> dict[str, Any]:
    slicer = _TextSlicer(byte_range, line_range, cap)
    pos = 0
    while block := os.pread(fd, read_size(size, pos), pos):
        pos += len(block)
        if pos > read_max:
            raise RpcError(ETOOBIG, f"file over the host's read limit of {read_max} bytes")
        slicer.feed(block)
    return slicer.result()


@_fs_op("fs.read", inline=True)
async def fs_read(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    path = arg_str(args, "path")
    ctx.audit["path"] = path
    binary = arg_bool(args, "binary")
    offset = arg_int(args, "offset", None, min_value=0)
    length = arg_int(args, "length", None, min_value=0)
    start_line = arg_int(args, "start_line", None, min_value=1)
    end_line = arg_int(args, "end_line", None, min_value=1)
    byte_range = None
    line_range = None
    if offset is not None or length is not None:
        start = offset or 0
        byte_range = (start, None if length is None else start + length)
    if start_line is not None or end_line is not None:
        if byte_range is not None:
            raise RpcError(EINVAL, "give a byte range (offset/length) or a line range, not both")
        if binary:
            raise RpcError(EINVAL, "line ranges apply to text reads only")
        s = start_line or 1
        if end_line is not None and end_line < s:
            raise RpcError(EINVAL, "end_line must be >= start_line")
        line_range = (s, end_line)
    policy = ctx.policy
    o = ctx.workspace.open(path, positional_only=True)  # only pread below
    try:
        st = o.st
        if stat.S_ISDIR(st.st_mode):
            raise RpcError(EISDIR, f"is a directory: {path}")
        if st.st_size > policy.read_max_bytes:
            raise RpcError(
                ETOOBIG, f"file over the host's read limit of {policy.read_max_bytes} bytes"
            )
        if binary:
            return await _read_binary(ctx, o, byte_range)
        if byte_range is None and line_range is None and st.st_size > policy.text_max_bytes:
            raise RpcError(
                ETOOBIG,
                f"file over the host's text limit of {policy.text_max_bytes} bytes; "
                'use "binary": true or a range',
            )
        result = None
        if st.st_size < INLINE_MAX and byte_range is None and line_range is None:
            result = _read_small_text(o.fd, st.st_size, policy.text_max_bytes)
        if result is not None:
            pass
        elif st.st_size < INLINE_MAX:
            result = _read_text(
                o.fd,
                st.st_size,
                byte_range,
                line_range,
                policy.text_max_bytes,
                policy.read_max_bytes,
            )
        else:
            result = await run_blocking(
                _read_text,
                o.fd,
                st.st_size,
                byte_range,
                line_range,
                policy.text_max_bytes,
                policy.read_max_bytes,
            )
        ctx.audit["bytes"] = result.pop("_bytes")
        return result
    finally:
        os.close(o.fd)


def _read_hashed(fd: int, n: int, pos: int, h: Any) -> bytes:
    block = os.pread(fd, n, pos)
    h.update(block)  # hashlib releases the GIL on large buffers: this overlaps with sending
    return block


async def _blocks(fd: int, size: int, h: Any) -> AsyncIterator[bytes]:
    """The file's blocks in order, each already added to the hash `h`.

    Small files are read on the event loop; larger ones in a worker thread, one block ahead of
    the consumer, so reading and hashing overlap with encryption and sending instead of
    alternating with them. One read at a time keeps the hash in file order. Blocks are
    STREAM_BLOCK bytes: each is one hand-off to the thread and back (a wake-up of the event
    loop), so fewer, larger blocks cost less CPU; two are in memory at a time."""
    if size < INLINE_MAX:
        pos = 0
        while block := os.pread(fd, read_size(size, pos), pos):
            pos += len(block)
            h.update(block)
            yield block
        return
    pool = _read_pool()
    pos = 0
    ahead = pool.submit(_read_hashed, fd, _stream_size(size, pos), pos, h)
    try:
        while True:
            block = await asyncio.wrap_future(ahead)
            if not block:
                return
            pos += len(block)
            ahead = pool.submit(_read_hashed, fd, _stream_size(size, pos), pos, h)
            yield block
    finally:
        # Never leave a read in flight on an fd the caller is about to close (at most one block).
        concurrent.futures.wait([ahead])


def _stream_size(expected: int, pos: int) -> int:
    """`read_size` for streamed reads: up to STREAM_BLOCK."""
    return min(STREAM_BLOCK, max(expected - pos + 1, 4096))


@functools.cache
def _read_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="kite-read")


async def _read_binary(
    ctx: OpContext, o: Opened, byte_range: tuple[int, int | None] | None
) -> dict[str, Any]:
    """Stream the file (or a byte range of it) as chunks; hash the whole file."""
    start, end = byte_range if byte_range is not None else (0, None)
    limit = ctx.policy.read_max_bytes
    h = hashlib.sha256()
    pos = 0
    sent = 0
    chunks = 0
    pending: memoryview | None = None
    size = o.st.st_size
    async with contextlib.aclosing(_blocks(o.fd, size, h)) as blocks:
        async for block in blocks:
            if pos + len(block) > limit:
                raise RpcError(ETOOBIG, f"file over the host's read limit of {limit} bytes")
            lo = max(start, pos)
            hi = pos + len(block) if end is None else min(end, pos + len(block))
            pos += len(block)
            base = pos - len(block)
            view = memoryview(block)  # pieces are views: the chunk frame is the only copy
            for i in range(lo, hi, CHUNK_SIZE):
                piece = view[i - base : min(hi, i + CHUNK_SIZE) - base]
                if pending is not None:
                    await ctx.send_chunk(pending, False)
                    chunks += 1
                pending = piece
                sent += len(piece)
    await ctx.send_chunk(pending if pending is not None else b"", True)
    chunks += 1
    ctx.audit["bytes"] = sent
    result: dict[str, Any] = {
        "size": pos,
        "sha256": h.hexdigest(),
        "binary": True,
        "chunks": chunks,
    }
    if byte_range is not None:
        result["offset"] = min(start, pos)
        result["length"] = sent
    return result


# -- fs.write ----------------------------------------------------------------------------------


def _tmp_name(name: str) -> str:
    short = name
    while len(os.fsencode(short)) > 180:
        short = short[: len(short) // 2]
    return f".{short}.kite-tmp-{secrets.token_hex(6)}"


@dataclass
class _Current:
    """What a path holds right before it is replaced."""

    exists: bool
    sha256: str | None = None
    mode: int | None = None


def _snapshot_current(ctx: OpContext, p: Parent) -> _Current:
    """Store the current content of p (if a file) as a blob; refuse what must not be replaced."""
    try:
        st = os.stat(p.name, dir_fd=p.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return _Current(False)
    if stat.S_ISDIR(st.st_mode):
        raise RpcError(EISDIR, f"is a directory: {p.rel}")
    if not stat.S_ISREG(st.st_mode):
        raise RpcError(EACCES, f"not a regular file: {p.rel}")
    fd, fst = _open_child_file(p.dir_fd, p.name, p.rel)
    try:
        sha = ctx.snapshots.put_blob_fd(fd)
    finally:
        os.close(fd)
    return _Current(True, sha, stat.S_IMODE(fst.st_mode))


def _current_sha(p: Parent) -> str | None:
    try:
        fd, _ = _open_child_file(p.dir_fd, p.name, p.rel)
    except FileNotFoundError:
        return None
    try:
        return _hash_fd(fd)
    finally:
        os.close(fd)


def _write_and_sync(fd: int, data: bytes) -> None:
    _write_all(fd, data)
    os.fsync(fd)


@_fs_op("fs.write", mutates=True, inline=True)
async def fs_write(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    path = arg_str(args, "path")
    ctx.audit["path"] = path
    binary = arg_bool(args, "binary")
    create_parents = arg_bool(args, "create_parents", True)
    if_match = args.get("if_match")
    if if_match is not None:
        if not isinstance(if_match, str) or not _SHA_RE.fullmatch(if_match):
            raise RpcError(EINVAL, "if_match must be a sha256 hex digest")
        if_match = if_match.lower()
    policy = ctx.policy
    data = b""
    if binary:
        if args.get("content") is not None:
            raise RpcError(EINVAL, "with binary: true the content comes as data chunks")
    else:
        content = arg_str(args, "content", allow_empty=True)
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise RpcError(EINVAL, "content is not valid Unicode text") from None
        if len(data) > policy.text_max_bytes:
            raise RpcError(ETOOBIG, f"text over the host's limit of {policy.text_max_bytes} bytes")
    ws = ctx.workspace
    with ws.parent(path, follow_final=True, create_parents=create_parents) as p:
        if p.rel != path:
            ctx.audit["resolved"] = p.rel
        if binary and if_match is not None:  # fail before the client streams for nothing
            current = await run_blocking(_current_sha, p)
            if current != if_match:
                raise RpcError(ECONFLICT, f"file changed: {path}", current_sha256=current)
        tmp = _tmp_name(p.name)
        # 0644 & ~umask for a new file; an existing file's mode is copied under the lock.
        fd = os.open(
            tmp,
            os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=p.dir_fd,
        )
        renamed = False
        try:
            if binary:
                h = hashlib.sha256()
                size = 0
                async for piece in ctx.recv_chunks():
                    size += len(piece)
                    if size > policy.read_max_bytes:
                        raise RpcError(
                            ETOOBIG, f"file over the host's limit of {policy.read_max_bytes} bytes"
                        )
                    h.update(piece)
                    _write_all(fd, piece)
                new_sha = h.hexdigest()
                await run_blocking(os.fsync, fd)
            else:
                size = len(data)
                new_sha = hashlib.sha256(data).hexdigest()
                await run_blocking(_write_and_sync, fd, data)
            async with ws.path_lock(p.rel):
                cur = await run_blocking(_snapshot_current, ctx, p)
                if if_match is not None and cur.sha256 != if_match:
                    raise RpcError(ECONFLICT, f"file changed: {path}", current_sha256=cur.sha256)
                if cur.mode is not None:
                    os.fchmod(fd, cur.mode)
                os.close(fd)
                fd = -1
                os.replace(tmp, p.name, src_dir_fd=p.dir_fd, dst_dir_fd=p.dir_fd)
                renamed = True
                ctx.snapshots.record(
                    op="write",
                    path=p.rel,
                    prev_sha256=cur.sha256,
                    new_sha256=new_sha,
                    device_id=ctx.device_id,
                    request_id=ctx.request_id,
                )
                await run_blocking(os.fsync, p.dir_fd)
        finally:
            if fd >= 0:
                os.close(fd)
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=p.dir_fd)
    ctx.audit["bytes"] = size
    return {"sha256": new_sha, "size": size, "created": not cur.exists}


# -- fs.list / fs.stat -------------------------------------------------------------------------


def _list_dir(ws: Workspace, fd: int, rel: str, show_all: bool) -> list[dict[str, Any]]:
    out = []
    with os.scandir(fd) as it:
        for e in it:
            if not show_all and e.name.startswith("."):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = _file_type(st.st_mode)
            if ws.is_denied(_join(rel, e.name), kind == "dir"):
                continue
            out.append({"name": e.name, "type": kind, "size": st.st_size, "mtime": st.st_mtime})
    out.sort(key=lambda x: x["name"])
    return out


@_fs_op("fs.list", inline=True)
async def fs_list(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    path = arg_str(args, "path", ".")
    ctx.audit["path"] = path
    show_all = arg_bool(args, "all")
    cap = ctx.policy.list_max_entries
    limit = arg_int(args, "limit", cap, min_value=1, max_value=cap)
    o = ctx.workspace.open(path)
    try:
        if not stat.S_ISDIR(o.st.st_mode):
            raise RpcError(ENOTDIR, f"not a directory: {path}")
        entries = await run_blocking(_list_dir, ctx.workspace, o.fd, o.rel, show_all)
    finally:
        os.close(o.fd)
    return {"entries": entries[:limit], "truncated": len(entries) > limit}


@_fs_op("fs.stat", inline=True)
async def fs_stat(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    path = arg_str(args, "path")
    ctx.audit["path"] = path
    want_hash = arg_bool(args, "hash")
    follow = arg_bool(args, "follow", True)
    st, rel = ctx.workspace.stat(path, follow=follow)
    result: dict[str, Any] = {
        "path": rel,
        "type": _file_type(st.st_mode),
        "size": st.st_size,
        "mtime": st.st_mtime,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
    }
    if want_hash:
        if result["type"] != "file":
            raise RpcError(EISDIR if result["type"] == "dir" else EINVAL, f"not a file: {path}")
        o = ctx.workspace.open(rel)
        try:
            if o.st.st_size > ctx.policy.read_max_bytes:
                raise RpcError(ETOOBIG, f"file over the host's read limit: {path}")
            if o.st.st_size < INLINE_MAX:
                result["sha256"] = _hash_fd(o.fd)
            else:
                result["sha256"] = await run_blocking(_hash_fd, o.fd)
        finally:
            os.close(o.fd)
    return result


# -- tree walking (glob, grep) -----------------------------------------------------------------


def _seg_regex(seg: str) -> str:
    """One glob path segment to a regex: `*`, `?`, `[...]` (with `!` or `^` negation)."""
    out = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            while i + 1 < len(seg) and seg[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < len(seg) and seg[j] in "!^":
                j += 1
            if j < len(seg) and seg[j] == "]":
                j += 1
            while j < len(seg) and seg[j] != "]":
                j += 1
            if j >= len(seg):
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : j]
                neg = body[:1] in ("!", "^")
                if neg:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"[{'^/' if neg else ''}{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass
class _Glob:
    """A compiled glob: whole-path regex plus per-segment regexes for pruning directories."""

    regex: re.Pattern[str]
    segs: list[re.Pattern[str] | None]  # None stands for `**`

    def may_contain(self, dir_parts: list[str]) -> bool:
        """Whether files under this directory (relative parts) can still match."""
        for i, part in enumerate(dir_parts):
            if i >= len(self.segs) - 1 and (i >= len(self.segs) or self.segs[i] is not None):
                return any(s is None for s in self.segs[: i + 1])
            seg = self.segs[i]
            if seg is None:
                return True
            if not seg.fullmatch(part):
                return False
        return True


def compile_glob(pattern: str) -> _Glob:
    """Path glob relative to a base directory: `*`, `?`, `[...]` within a segment, `**` across."""
    if "\x00" in pattern:
        raise RpcError(EINVAL, "glob contains a NUL byte")
    if pattern.startswith("/"):
        raise RpcError(EACCES, "absolute globs are not allowed")
    segs = [s for s in pattern.split("/") if s and s != "."]
    if not segs:
        raise RpcError(EINVAL, "empty glob")
    if ".." in segs:
        raise RpcError(EACCES, "globs may not contain '..'")
    out = ""
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            out += ".*" if last else "(?:[^/]*/)*"
        else:
            out += _seg_regex(seg) + ("" if last else "/")
    try:
        regex = re.compile(out, re.DOTALL)
        seg_res = [None if s == "**" else re.compile(_seg_regex(s), re.DOTALL) for s in segs]
    except re.error as exc:
        raise RpcError(EINVAL, f"bad glob: {exc}") from None
    return _Glob(regex, seg_res)


@dataclass
class _Ignores:
    """The .gitignore files in effect for one directory: (base rel, spec), outermost first."""

    specs: list[tuple[str, pathspec.GitIgnoreSpec]] = field(default_factory=list)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        # The deepest .gitignore with a matching pattern decides (git's precedence).
        for base, spec in reversed(self.specs):
            sub = rel[len(base) + 1 :] if base else rel
            res = spec.check_file(sub + "/" if is_dir else sub)
            if res.include is not None:
                return bool(res.include)
        return False

    def with_dir(self, ws: Workspace, dir_fd: int, rel: str) -> _Ignores:
        spec = _read_gitignore(ws, dir_fd, rel)
        return self if spec is None else _Ignores([*self.specs, (rel, spec)])


def _read_gitignore(ws: Workspace, dir_fd: int, rel: str) -> pathspec.GitIgnoreSpec | None:
    if ws.is_denied(_join(rel, ".gitignore")):
        return None
    try:
        fd = os.open(".gitignore", _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_size > GITIGNORE_MAX:
            return None
        data = os.read(fd, GITIGNORE_MAX)
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "replace").splitlines()
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except Exception:  # a broken .gitignore must not break search; git skips bad lines too
        return None


def _ignores_above(ws: Workspace, rel: str) -> _Ignores:
    """The .gitignore files of the root and of every directory down to (excluding) `rel`."""
    ign = _Ignores()
    parts = rel.split("/") if rel else []
    for i in range(len(parts)):
        base = "/".join(parts[:i])
        try:
            o = ws.open_dir(base or ".")
        except RpcError:
            return ign
        try:
            ign = ign.with_dir(ws, o.fd, base)
        finally:
            os.close(o.fd)
        if ign.ignored(_join(base, parts[i]), True):
            return ign
    return ign


@dataclass
class _Walked:
    dir_fd: int
    name: str
    rel: str  # workspace-relative
    sub: str  # relative to the walk's start
    kind: str  # "file" | "symlink" | "other"


def _walk(
    ws: Workspace,
    top_fd: int,
    top_rel: str,
    cancel: threading.Event,
    prune: Callable[[list[str]], bool] | None = None,
) -> Iterator[_Walked]:
    """Depth-first, name-sorted walk that never follows symlinks and never leaves the tree.

    Skips `.git/`, paths ignored by .gitignore files (any level) and paths the host policy
    denies. Directories are opened with O_NOFOLLOW relative to their parent's fd. Yields
    non-directory entries; the yielded dir_fd is valid until the next iteration.
    """
    ignores = _ignores_above(ws, top_rel)
    top = os.dup(top_fd)
    stack: list[tuple[int, str, list[str], Iterator[os.DirEntry[str]], _Ignores]] = []
    try:
        ign = ignores.with_dir(ws, top, top_rel)
        stack.append((top, top_rel, [], iter(_sorted_entries(top)), ign))
        while stack:
            if cancel.is_set():
                return
            fd, rel, parts, it, ign = stack[-1]
            e = next(it, None)
            if e is None:
                stack.pop()
                os.close(fd)
                continue
            name = e.name
            crel = _join(rel, name)
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if name == ".git" or ws.is_denied(crel, True) or ign.ignored(crel, True):
                    continue
                cparts = [*parts, name]
                if prune is not None and not prune(cparts):
                    continue
                try:
                    cfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    cign = ign.with_dir(ws, cfd, crel)
                    entries = _sorted_entries(cfd)
                except BaseException:
                    os.close(cfd)
                    raise
                stack.append((cfd, crel, cparts, iter(entries), cign))
                continue
            if ws.is_denied(crel) or ign.ignored(crel, False):
                continue
            try:
                kind = (
                    "file"
                    if e.is_file(follow_symlinks=False)
                    else "symlink"
                    if e.is_symlink()
                    else "other"
                )
            except OSError:
                continue
            yield _Walked(fd, name, crel, "/".join([*parts, name]), kind)
    finally:
        for fd, *_ in stack:
            os.close(fd)


def _sorted_entries(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as it:
        return sorted(it, key=lambda e: e.name)


def _glob_sync(
    ws: Workspace, fd: int, rel: str, g: _Glob, limit: int, cancel: threading.Event
) -> tuple[list[str], bool]:
    paths: list[str] = []
    for w in _walk(ws, fd, rel, cancel, prune=g.may_contain):
        if w.kind != "other" and g.regex.fullmatch(w.sub):
            if len(paths) >= limit:
                return paths, True
            paths.append(w.rel)
    return paths, False


@_fs_op("fs.glob")
async def fs_glob(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    pattern = arg_str(args, "pattern")
    path = arg_str(args, "path", ".")
    ctx.audit["path"] = path
    ctx.audit["pattern"] = pattern
    cap = ctx.policy.glob_max_results
    limit = arg_int(args, "limit", cap, min_value=1, max_value=cap)
    g = compile_glob(pattern)
    o = ctx.workspace.open_dir(path)
    cancel = threading.Event()
    try:
        paths, truncated = await run_blocking(
            _glob_sync, ctx.workspace, o.fd, o.rel, g, limit, cancel, cancel=cancel
        )
    finally:
        os.close(o.fd)
    return {"paths": paths, "truncated": truncated}


# -- fs.grep -----------------------------------------------------------------------------------


@dataclass
class _GrepJob:
    regex: re.Pattern[str]
    file_filter: Callable[[str, str], bool] | None  # (sub path, name) -> keep?
    max_results: int
    context: int
    cancel: threading.Event
    matches: list[dict[str, Any]] = field(default_factory=list)
    files_searched: int = 0
    truncated: bool = False


def _grep_filter(glob: str) -> Callable[[str, str], bool]:
    """ripgrep-style file filter: without `/` it matches the file name at any depth."""
    if "/" in glob.strip("/"):
        g = compile_glob(glob)
        return lambda sub, name: g.regex.fullmatch(sub) is not None
    seg = re.compile(_seg_regex(glob.strip("/")), re.DOTALL)
    return lambda sub, name: seg.fullmatch(name) is not None


def _grep_text(job: _GrepJob, rel: str, data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    if job.regex.search(text) is None:
        return
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the text after a final newline is not a line
    ctxn = job.context
    for i, line in enumerate(lines):
        if line.endswith("\r"):
            line = line[:-1]
        if job.regex.search(line) is None:
            continue
        if len(job.matches) >= job.max_results:
            job.truncated = True
            return
        m: dict[str, Any] = {"path": rel, "line": i + 1, "text": line[:LINE_TEXT_MAX]}
        if ctxn:
            m["before"] = [s.rstrip("\r")[:LINE_TEXT_MAX] for s in lines[max(0, i - ctxn) : i]]
            m["after"] = [s.rstrip("\r")[:LINE_TEXT_MAX] for s in lines[i + 1 : i + 1 + ctxn]]
        job.matches.append(m)


def _grep_file(job: _GrepJob, dir_fd: int, name: str, rel: str) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_size > GREP_MAX_FILE:
            return
        data = os.read(fd, st.st_size + 1)  # not GREP_MAX_FILE: a 4 MiB buffer per file is slow
    except OSError:
        return
    finally:
        os.close(fd)
    if len(data) > GREP_MAX_FILE or b"\x00" in data[:BINARY_SNIFF]:
        return
    job.files_searched += 1
    _grep_text(job, rel, data)


def _grep_sync(ws: Workspace, o: Opened, job: _GrepJob) -> None:
    if not stat.S_ISDIR(o.st.st_mode):
        # A single file: the jail already checked it; read it through the fd we hold.
        if o.st.st_size > GREP_MAX_FILE:
            return
        data = os.pread(o.fd, o.st.st_size + 1, 0)
        if b"\x00" not in data[:BINARY_SNIFF]:
            job.files_searched += 1
            _grep_text(job, o.rel, data)
        return
    for w in _walk(ws, o.fd, o.rel, job.cancel):
        if w.kind != "file":
            continue
        if job.file_filter is not None and not job.file_filter(w.sub, w.name):
            continue
        _grep_file(job, w.dir_fd, w.name, w.rel)
        if job.truncated or job.cancel.is_set():
            return


@_fs_op("fs.grep")
async def fs_grep(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    pattern = arg_str(args, "pattern")
    path = arg_str(args, "path", ".")
    ctx.audit["path"] = path
    ctx.audit["pattern"] = pattern[:200]
    glob = args.get("glob")
    if glob is not None and (not isinstance(glob, str) or not glob):
        raise RpcError(EINVAL, "argument 'glob' must be a non-empty string")
    ignore_case = arg_bool(args, "ignore_case")
    cap = ctx.policy.grep_max_results
    max_results = arg_int(args, "max_results", cap, min_value=1, max_value=cap)
    context = arg_int(args, "context", 0, min_value=0, max_value=CONTEXT_MAX)
    try:
        regex = re.compile(pattern, re.MULTILINE | (re.IGNORECASE if ignore_case else 0))
    except (re.error, RecursionError, OverflowError) as exc:
        raise RpcError(EINVAL, f"invalid regular expression: {exc}") from None
    job = _GrepJob(
        regex=regex,
        file_filter=_grep_filter(glob) if glob else None,
        max_results=max_results,
        context=context,
        cancel=threading.Event(),
    )
    o = ctx.workspace.open(path)
    try:
        await run_blocking(_grep_sync, ctx.workspace, o, job, cancel=job.cancel)
    finally:
        os.close(o.fd)
    return {
        "matches": job.matches,
        "truncated": job.truncated,
        "files_searched": job.files_searched,
    }


# -- fs.delete ---------------------------------------------------------------------------------


@dataclass
class _Budget:
    files: int  # left to snapshot
    bytes: int
    saved: int = 0
    unsaved: int = 0


def _prescan(ws: Workspace, dir_fd: int, rel: str, check_links: bool) -> None:
    """Refuse (EACCES) a tree that holds a denied or protected path (or a hard-linked file)."""
    stack = [(os.dup(dir_fd), rel)]
    try:
        while stack:
            fd, r = stack.pop()
            try:
                for e in _sorted_entries(fd):
                    crel = _join(r, e.name)
                    is_dir = e.is_dir(follow_symlinks=False)
                    if ws.is_denied(crel, is_dir) or ws.is_protected(crel):
                        raise RpcError(EACCES, f"contains a path denied by host policy: {crel}")
                    if is_dir:
                        stack.append((os.open(e.name, DIR_FLAGS, dir_fd=fd), crel))
                    elif (
                        check_links
                        and e.is_file(follow_symlinks=False)
                        and e.stat(follow_symlinks=False).st_nlink > 1
                    ):
                        raise RpcError(EACCES, f"contains a hard-linked file: {crel}")
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)


def _remove_entry(
    ctx: OpContext, dir_fd: int, name: str, rel: str, st: os.stat_result, budget: _Budget
) -> dict[str, Any]:
    """Unlink one non-directory after snapshotting it; returns its index row."""
    row: dict[str, Any] = {"op": "delete", "path": rel, "prev_sha256": None, "new_sha256": None}
    kind = _file_type(st.st_mode)
    if kind == "file":
        if budget.files > 0 and st.st_size <= budget.bytes:
            fd, fst = _open_child_file(dir_fd, name, rel)
            try:
                row["prev_sha256"] = ctx.snapshots.put_blob_fd(fd)
            finally:
                os.close(fd)
            budget.files -= 1
            budget.bytes -= fst.st_size
            budget.saved += 1
        else:
            budget.unsaved += 1
            row["extra"] = {"type": "file", "unsaved": True}
    elif kind == "symlink":
        row["extra"] = {"type": "symlink", "target": os.readlink(name, dir_fd=dir_fd)}
    else:
        row["extra"] = {"type": "other"}
    os.unlink(name, dir_fd=dir_fd)
    return row


def _rmtree(ctx: OpContext, parent_fd: int, name: str, rel: str, budget: _Budget) -> list[dict]:
    """Delete a directory tree without ever following a symlink (fds all the way down)."""
    rows: list[dict[str, Any]] = []
    top = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]], int, str]] = [
        (top, rel, iter(_sorted_entries(top)), parent_fd, name)
    ]
    try:
        while stack:
            fd, r, it, pfd, pname = stack[-1]
            e = next(it, None)
            if e is None:
                stack.pop()
                os.close(fd)
                os.rmdir(pname, dir_fd=pfd)
                rows.append(
                    {
                        "op": "delete",
                        "path": r,
                        "prev_sha256": None,
                        "new_sha256": None,
                        "extra": {"type": "dir"},
                    }
                )
                continue
            crel = _join(r, e.name)
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                cfd = os.open(e.name, DIR_FLAGS, dir_fd=fd)
                stack.append((cfd, crel, iter(_sorted_entries(cfd)), fd, e.name))
            else:
                if ctx.workspace.is_denied(crel) or ctx.workspace.is_protected(crel):
                    raise RpcError(EACCES, f"contains a path denied by host policy: {crel}")
                rows.append(_remove_entry(ctx, fd, e.name, crel, st, budget))
    finally:
        for fd, *_ in stack:
            os.close(fd)
        _record_rows(ctx, rows)
    return rows


def _record_rows(ctx: OpContext, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        ctx.snapshots.record(device_id=ctx.device_id, request_id=ctx.request_id, **row)


def _delete_sync(ctx: OpContext, p: Parent, recursive: bool) -> dict[str, Any]:
    try:
        st = os.stat(p.name, dir_fd=p.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise RpcError(ENOENT, f"no such file or directory: {p.rel}") from None
    budget = _Budget(SNAPSHOT_DELETE_MAX_FILES, SNAPSHOT_DELETE_MAX_BYTES)
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            raise RpcError(EISDIR, f'is a directory (pass "recursive": true): {p.rel}')
        fd = os.open(p.name, DIR_FLAGS, dir_fd=p.dir_fd)
        try:
            _prescan(ctx.workspace, fd, p.rel, check_links=True)
        finally:
            os.close(fd)
        rows = _rmtree(ctx, p.dir_fd, p.name, p.rel, budget)
        files = sum(1 for r in rows if not r.get("extra") or r["extra"].get("type") != "dir")
    else:
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise RpcError(EACCES, f"file has several hard links; refused: {p.rel}")
        _record_rows(ctx, [_remove_entry(ctx, p.dir_fd, p.name, p.rel, st, budget)])
        files = 1
    os.fsync(p.dir_fd)
    result: dict[str, Any] = {"deleted": True, "files": files}
    if budget.unsaved:
        result["snapshot_complete"] = False
        result["unsaved_files"] = budget.unsaved
    return result


@_fs_op("fs.delete", mutates=True)
async def fs_delete(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    path = arg_str(args, "path")
    ctx.audit["path"] = path
    recursive = arg_bool(args, "recursive")
    with ctx.workspace.parent(path, follow_final=False) as p:
        async with ctx.workspace.path_lock(p.rel):
            return await run_blocking(_delete_sync, ctx, p, recursive)


# -- fs.move -----------------------------------------------------------------------------------


def _move_sync(ctx: OpContext, src: Parent, dst: Parent, overwrite: bool) -> dict[str, Any]:
    try:
        sst = os.stat(src.name, dir_fd=src.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise RpcError(ENOENT, f"no such file or directory: {src.rel}") from None
    kind = _file_type(sst.st_mode)
    src_sha = None
    if kind == "dir":
        fd = os.open(src.name, DIR_FLAGS, dir_fd=src.dir_fd)
        try:
            _prescan(ctx.workspace, fd, src.rel, check_links=False)
        finally:
            os.close(fd)
    elif kind == "file":
        fd, _ = _open_child_file(src.dir_fd, src.name, src.rel)
        try:
            src_sha = ctx.snapshots.put_blob_fd(fd)  # every prev_sha256 names a stored blob
        finally:
            os.close(fd)
    try:
        dst_st = os.stat(dst.name, dir_fd=dst.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        dst_st = None
    dst_prev = None
    if dst_st is not None:
        if not overwrite:
            raise RpcError(EEXIST, f'destination exists (pass "overwrite": true): {dst.rel}')
        if stat.S_ISDIR(dst_st.st_mode):
            raise RpcError(EEXIST, f"destination is a directory: {dst.rel}")
        if kind == "dir":
            raise RpcError(ENOTDIR, f"cannot replace a file with a directory: {dst.rel}")
        if stat.S_ISREG(dst_st.st_mode):
            dst_prev = _snapshot_current(ctx, dst).sha256
    os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
    _record_rows(
        ctx,
        [
            {
                "op": "move",
                "path": src.rel,
                "prev_sha256": src_sha,
                "new_sha256": None,
                "extra": {"to": dst.rel, "type": kind},
            },
            {
                "op": "move",
                "path": dst.rel,
                "prev_sha256": dst_prev,
                "new_sha256": src_sha,
                "extra": {"from": src.rel, "type": kind},
            },
        ],
    )
    os.fsync(src.dir_fd)
    if dst.dir_fd != src.dir_fd:
        os.fsync(dst.dir_fd)
    return {"moved": True, "from": src.rel, "to": dst.rel, "overwritten": dst_st is not None}


@_fs_op("fs.move", mutates=True, inline=True)
async def fs_move(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    src_path = arg_str(args, "from")
    dst_path = arg_str(args, "to")
    ctx.audit["path"] = src_path
    ctx.audit["to"] = dst_path
    overwrite = arg_bool(args, "overwrite")
    create_parents = arg_bool(args, "create_parents", True)
    ws = ctx.workspace
    with ws.parent(src_path, follow_final=False) as src:
        if not _exists(src):
            raise RpcError(ENOENT, f"no such file or directory: {src_path}")
        with ws.parent(dst_path, follow_final=False, create_parents=create_parents) as dst:
            if src.rel == dst.rel:
                raise RpcError(EINVAL, "source and destination are the same")
            if dst.rel.startswith(src.rel + "/"):
                raise RpcError(EINVAL, "cannot move a directory into itself")
            first, second = sorted((src.rel, dst.rel))
            async with ws.path_lock(first), ws.path_lock(second):
                return await run_blocking(_move_sync, ctx, src, dst, overwrite)


def _exists(p: Parent) -> bool:
    try:
        os.stat(p.name, dir_fd=p.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


# -- fs.mkdir ----------------------------------------------------------------------------------


@_fs_op("fs.mkdir", mutates=True, inline=True)
async def fs_mkdir(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    path = arg_str(args, "path")
    ctx.audit["path"] = path
    parents = arg_bool(args, "parents", True)
    with ctx.workspace.parent(path, follow_final=True, create_parents=parents) as p:
        try:
            os.mkdir(p.name, 0o777, dir_fd=p.dir_fd)
        except FileExistsError:
            st = os.stat(p.name, dir_fd=p.dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return {"created": False}
            raise RpcError(EEXIST, f"exists and is not a directory: {path}") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise RpcError(
                    ENOENT, f'parent directory missing (pass "parents": true): {path}'
                ) from None
            raise
    return {"created": True}
