"""`fs.history` and `fs.restore`: undo and redo from the snapshot store (bridge/snapshots.py).

Every write, delete and move keeps the content it replaces as a blob; these ops let a device put
any stored content back without ever sending it: the device names a sha256 (or "absent"), the
bridge copies the blob into place. So undo/redo of an agent's step costs one small request per
file, whatever the size of the file.

`fs.restore` is a write like `fs.write`: atomic (temporary file, fsync, rename, directory
fsync), mode kept, the content it replaces snapshotted first (so a restore can itself be undone),
and guarded: `if_match` is required — the sha256 the file must have now, or "absent" — so a file
changed on the host since the step is never overwritten (ECONFLICT with
`details.current_sha256`). Restoring "absent" deletes the file (its content is snapshotted first);
restoring what is already there is a no-op that still succeeds (a retried request is harmless).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import stat
from typing import Any

from agent_core.rpc.errors import EACCES, ECONFLICT, EINVAL, EISDIR, ENOENT, ETOOBIG, RpcError
from bridge.jail import Parent, os_error
from bridge.ops.base import OpContext, arg_bool, arg_int, arg_str, op
from bridge.ops.fs import run_blocking

ABSENT = "absent"
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _guarded(fn: Any) -> Any:
    """Map a stray OSError to an RpcError naming the workspace path, as the fs ops do."""

    @functools.wraps(fn)
    async def wrapper(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return await fn(ctx, args)  # type: ignore[no-any-return]
        except OSError as exc:
            raise os_error(exc, str(ctx.audit.get("path", ""))) from None

    return wrapper


def _sha_arg(args: dict[str, Any], key: str, *, absent_ok: bool) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise RpcError(EINVAL, f"argument '{key}' is required: a sha256 hex digest or 'absent'")
    value = value.lower()
    if value == ABSENT and absent_ok:
        return ABSENT
    if not _SHA_RE.fullmatch(value):
        raise RpcError(EINVAL, f"argument '{key}' must be a sha256 hex digest or 'absent'")
    return value


def _current(ctx: OpContext, p: Parent) -> tuple[str | None, int | None]:
    """(sha256, mode) of what p holds now, its content stored as a blob; (None, None) if absent."""
    try:
        st = os.stat(p.name, dir_fd=p.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None, None
    if stat.S_ISDIR(st.st_mode):
        raise RpcError(EISDIR, f"is a directory: {p.rel}")
    if not stat.S_ISREG(st.st_mode):
        raise RpcError(EACCES, f"not a regular file: {p.rel}")
    fd = os.open(p.name, _OPEN_FLAGS, dir_fd=p.dir_fd)
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise RpcError(EACCES, f"not a regular file: {p.rel}")
        if fst.st_nlink > 1:
            raise RpcError(EACCES, f"file has several hard links; refused: {p.rel}")
        return ctx.snapshots.put_blob_fd(fd), stat.S_IMODE(fst.st_mode)
    finally:
        os.close(fd)


def _write_tmp(dir_fd: int, name: str, data: bytes) -> str:
    tmp = f".{name[:100]}.kite-tmp-{secrets.token_hex(6)}"
    fd = os.open(
        tmp,
        os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
        dir_fd=dir_fd,
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    return tmp


@op("fs.restore", mutates=True, inline=True)
@_guarded
async def fs_restore(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    unknown = set(args) - {"path", "sha256", "if_match"}
    if unknown:
        raise RpcError(EINVAL, f"unknown argument(s): {', '.join(sorted(map(str, unknown)))}")
    path = arg_str(args, "path")
    ctx.audit["path"] = path
    target = _sha_arg(args, "sha256", absent_ok=True)
    if_match = _sha_arg(args, "if_match", absent_ok=True)
    if ctx.policy.read_only:  # defence in depth: the connection checks `mutates` too
        raise RpcError(EACCES, "the host is in read-only mode")
    data = b""
    if target != ABSENT:
        try:
            data = await run_blocking(ctx.snapshots.blob, target)
        except KeyError:
            raise RpcError(ENOENT, f"no snapshot holds that content for {path}") from None
        if len(data) > ctx.policy.read_max_bytes:
            raise RpcError(ETOOBIG, f"file over the host's limit of {ctx.policy.read_max_bytes}")
    ws = ctx.workspace
    with ws.parent(path, follow_final=True, create_parents=target != ABSENT) as p:
        if p.rel != path:
            ctx.audit["resolved"] = p.rel
        tmp = await run_blocking(_write_tmp, p.dir_fd, p.name, data) if target != ABSENT else None
        try:
            async with ws.path_lock(p.rel):
                cur_sha, mode = await run_blocking(_current, ctx, p)
                if (cur_sha or ABSENT) != if_match:
                    raise RpcError(ECONFLICT, f"file changed: {path}", current_sha256=cur_sha)
                result = {"path": p.rel, "sha256": None if target == ABSENT else target}
                if (cur_sha or ABSENT) == target:  # already so: nothing to write or record
                    return {**result, "changed": False, "created": False, "deleted": False}
                if tmp is None:
                    os.unlink(p.name, dir_fd=p.dir_fd)
                else:
                    if mode is not None:
                        os.chmod(tmp, mode, dir_fd=p.dir_fd)
                    os.replace(tmp, p.name, src_dir_fd=p.dir_fd, dst_dir_fd=p.dir_fd)
                    tmp = None
                ctx.snapshots.record(
                    op="restore",
                    path=p.rel,
                    prev_sha256=cur_sha,
                    new_sha256=None if target == ABSENT else target,
                    device_id=ctx.device_id,
                    request_id=ctx.request_id,
                )
                await run_blocking(os.fsync, p.dir_fd)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=p.dir_fd)
    ctx.audit["bytes"] = len(data)
    created = cur_sha is None and target != ABSENT
    return {**result, "changed": True, "created": created, "deleted": target == ABSENT}


@op("fs.history", inline=True)
@_guarded
async def fs_history(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    unknown = set(args) - {"path", "limit", "available"}
    if unknown:
        raise RpcError(EINVAL, f"unknown argument(s): {', '.join(sorted(map(str, unknown)))}")
    path: str | None = None
    if args.get("path") is not None:
        raw = arg_str(args, "path")
        ctx.audit["path"] = raw
        try:
            with ctx.workspace.parent(raw, follow_final=True) as p:
                path = p.rel
        except RpcError as exc:  # its directory is gone too: look the name up as given
            if exc.code != ENOENT:
                raise
            path = raw.strip("/")
    limit = arg_int(args, "limit", 100, min_value=1, max_value=1000)
    check = arg_bool(args, "available", False)
    rows = await run_blocking(ctx.snapshots.history, path, limit)
    entries = []
    for r in rows:
        entry: dict[str, Any] = {
            "seq": r.seq,
            "time": r.time,
            "op": r.op,
            "path": r.path,
            "prev_sha256": r.prev_sha256,
            "new_sha256": r.new_sha256,
        }
        if r.extra:
            entry["extra"] = r.extra
        if check:
            entry["prev_available"] = r.prev_sha256 is None or ctx.snapshots.has_blob(r.prev_sha256)
        entries.append(entry)
    return {"entries": entries}
