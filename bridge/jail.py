"""The workspace jail: every client path is resolved here; nothing outside the root is reachable.

Client paths are relative and `/`-separated. They are resolved without a check-then-use race: the
jail holds an fd on the root and walks one component at a time with
`openat(parent, name, O_DIRECTORY|O_NOFOLLOW)`, so the kernel never follows a symlink on our behalf.
Symlinks are read with `readlinkat` and their targets spliced into the remaining components by the
jail itself, which keeps its own stack of directory fds: a `..` pops that stack and can never climb
above the root. The final component is opened with `O_NOFOLLOW|O_NONBLOCK` (a FIFO cannot block the
bridge) and then `fstat`ed: only regular files and directories are ever handed out.

Rules (each is an `RpcError`, never a raw OSError, and messages only name workspace paths):

* absolute client paths, `..` above the root, symlinks whose target leaves the root → EACCES;
* NUL bytes, names the OS cannot encode, over-long paths, more than 40 symlinks → EINVAL;
  a backslash is an ordinary character (POSIX file names may contain it);
  empty components and `.` are ignored (`a//./b` is `a/b`);
* device files, FIFOs and sockets → EACCES (opening some devices has side effects, so an lstat
  pre-check refuses them before `open`; the `fstat` after `open` is the authoritative check);
* regular files with more than one hard link → EACCES for reading and writing: a hard link is
  indistinguishable from the original, so a link to a file outside the root (which anyone with
  local access could create, no symlink needed) would otherwise leak or expose that file;
* the host policy's deny globs (gitignore-style, matched case-insensitively because macOS and
  Windows file systems are) → EACCES. They are checked against the path as the client wrote it,
  against the location of every symlink followed on the way, and against the resolved path;
* `.kite/` and everything in it (the policy file, the workspace's plugins) can never be written,
  created, deleted or moved.

What the jail cannot stop: a process already running on the host (e.g. one started through exec)
that moves a directory out of the root while a walk holds an fd on it. Linux `openat2`
(RESOLVE_BENEATH) would close that gap; Python does not expose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import posixpath
import re
import stat
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import pathspec

from agent_core.rpc.errors import (
    EACCES,
    EEXIST,
    EINVAL,
    EIO,
    EISDIR,
    ENOENT,
    ENOSPC,
    ENOTDIR,
    ETOOBIG,
    EUNSUPPORTED,
    RpcError,
)
from bridge.policy import DEFAULT_DENY, WORKSPACE_POLICY_FILE

PROTECTED_DIR = WORKSPACE_POLICY_FILE.split("/", 1)[0]  # ".kite"

if TYPE_CHECKING:
    from bridge.policy import Policy

MAX_SYMLINKS = 40
MAX_PATH_CHARS = 4096

Access = Literal["read", "write"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = os.O_NOFOLLOW
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC
# The file status flags F_SETFL can change (all but O_NONBLOCK are kept as the caller passed them).
_SETFL_MASK = (
    os.O_APPEND
    | getattr(os, "O_ASYNC", 0)
    | getattr(os, "O_DIRECT", 0)
    | getattr(os, "O_NOATIME", 0)
)
# errno values `open(..., O_NOFOLLOW)` gives for a symlink: Linux ELOOP, FreeBSD EMLINK, and
# ENOTDIR when O_DIRECTORY is checked first.
_SYMLINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})

_ERRNO_CODES = {
    errno.ENOENT: (ENOENT, "no such file or directory"),
    errno.EEXIST: (EEXIST, "already exists"),
    errno.ENOTEMPTY: (EEXIST, "directory not empty"),
    errno.EISDIR: (EISDIR, "is a directory"),
    errno.ENOTDIR: (ENOTDIR, "not a directory"),
    errno.EACCES: (EACCES, "permission denied by the host"),
    errno.EPERM: (EACCES, "operation not permitted by the host"),
    errno.EROFS: (EACCES, "read-only file system"),
    errno.ENOSPC: (ENOSPC, "no space left on the host's disk"),
    errno.EDQUOT: (ENOSPC, "disk quota exceeded on the host"),
    errno.EFBIG: (ETOOBIG, "file too large"),
    errno.ENAMETOOLONG: (EINVAL, "file name too long"),
    errno.ELOOP: (EINVAL, "too many levels of symbolic links"),
    errno.EXDEV: (EUNSUPPORTED, "cannot move across file systems"),
    errno.EINVAL: (EINVAL, "invalid argument"),
    errno.EBUSY: (EACCES, "resource busy"),
    errno.ETXTBSY: (EACCES, "text file busy"),
}


def os_error(exc: OSError, rel: str) -> RpcError:
    """Map an OSError to an RpcError that names only the workspace path (never `exc.filename`)."""
    code, text = _ERRNO_CODES.get(exc.errno or 0, (EIO, "host I/O error"))
    return RpcError(code, f"{text}: {rel or '.'}")


class Opened(NamedTuple):
    """An open file or directory inside the workspace. The caller owns `fd`."""

    fd: int
    st: os.stat_result
    rel: str  # resolved workspace-relative path ("" is the root)


@dataclass(frozen=True)
class Parent:
    """The directory holding a path's final component, for create/replace/unlink/rename.

    `dir_fd` is owned by this object unless it is the workspace root's fd: use `close()`
    (or `Workspace.parent(...)` as a context manager), never `os.close(dir_fd)`.
    """

    dir_fd: int
    name: str  # never "", "." or ".."
    rel: str  # resolved workspace-relative path of the final component
    owned: bool

    @property
    def dir_rel(self) -> str:
        return posixpath.dirname(self.rel)

    def close(self) -> None:
        if self.owned:
            os.close(self.dir_fd)


_FLOATING = "^(?:.+/)?"  # pathspec's prefix for a pattern that may match at any depth


@dataclass(frozen=True)
class _DenyMatcher:
    """All deny globs as two case-insensitive regexes (~5x faster than pathspec's loop).

    Deny lists hold no negations (the policy loader refuses `!`), so "denied" is simply "any
    pattern matches". pathspec compiles each gitignore pattern to a regex; those that may match
    at any depth (`^(?:.+/)?X`) are joined as `(?:^|/)(?:X|Y|...)` for `search`, the anchored
    ones as one alternation for `match`.
    """

    floating: re.Pattern[str] | None
    anchored: re.Pattern[str] | None

    def __call__(self, rel: str) -> bool:
        if self.floating is not None and self.floating.search(rel) is not None:
            return True
        return self.anchored is not None and self.anchored.match(rel) is not None


def _compile_deny(patterns: Iterable[str]) -> _DenyMatcher:
    spec = pathspec.GitIgnoreSpec.from_lines(list(patterns))
    floating: list[str] = []
    anchored: list[str] = []
    for p in spec.patterns:
        regex = getattr(p, "regex", None)
        if p.include is None or regex is None:
            continue
        if not p.include:
            raise ValueError("negated deny patterns are not supported")
        src = re.sub(r"\(\?P<\w+>", "(?:", regex.pattern)
        if src.startswith(_FLOATING):
            floating.append(src[len(_FLOATING) :])
        else:
            anchored.append(f"(?:{src})")
    flags = re.IGNORECASE | re.DOTALL
    return _DenyMatcher(
        re.compile("(?:^|/)(?:" + "|".join(floating) + ")", flags) if floating else None,
        re.compile("|".join(anchored), flags) if anchored else None,
    )


class Workspace:
    """The workspace root and every way into it. Thread-safe (it only holds the root's fd)."""

    def __init__(self, root: Path | str, policy: Policy | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.root_real = os.path.realpath(self.root)
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        deny = policy.deny if policy is not None else DEFAULT_DENY
        self._deny = _compile_deny(deny)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- policy checks --------------------------------------------------------------------

    def is_denied(self, rel: str, is_dir: bool = False) -> bool:
        """Whether the host policy's deny globs cover this workspace-relative path."""
        if not rel:
            return False
        return self._deny(rel) or (is_dir and self._deny(rel + "/"))

    @staticmethod
    def is_protected(rel: str) -> bool:
        """`.kite/` (the policy file, the workspace's plugins the host loads and may trust by
        name) and everything under it: never written, created, deleted or moved by a client."""
        r = rel.casefold()
        return r == PROTECTED_DIR or r.startswith(PROTECTED_DIR + "/")

    def path_lock(self, rel: str) -> asyncio.Lock:
        """One asyncio lock per resolved path, for compare-and-swap writes (if_match)."""
        lock = self._locks.get(rel)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[rel] = lock
        return lock

    # -- resolution -----------------------------------------------------------------------

    def _split(self, path: object) -> tuple[list[str], str | None]:
        """Validate a client path; return its components and its lexical normal form."""
        if not isinstance(path, str):
            raise RpcError(EINVAL, "path must be a string")
        if "\x00" in path:
            raise RpcError(EINVAL, "path contains a NUL byte")
        if len(path) > MAX_PATH_CHARS:
            raise RpcError(EINVAL, f"path longer than {MAX_PATH_CHARS} characters")
        if not path.isascii():  # ASCII always encodes: skip the check on the common path
            try:
                os.fsencode(path)
            except UnicodeError:
                raise RpcError(EINVAL, "path is not encodable on this host") from None
        if path.startswith("/"):
            raise RpcError(EACCES, "absolute paths are not allowed; use workspace-relative paths")
        parts = [c for c in path.split("/") if c and c != "."]
        if ".." not in parts:  # already normal: normpath would return the same string
            return parts, ("/".join(parts) if parts else None)
        lexical = posixpath.normpath("/".join(parts))
        if lexical == ".." or lexical.startswith("../"):
            raise RpcError(EACCES, f"path escapes the workspace: {path}")
        return parts, (None if lexical == "." else lexical)

    def _target_parts(self, target: str, shown: str) -> tuple[bool, list[str]]:
        """Split a symlink target: (restart at root?, components). Absolute targets must point
        inside the root (given either as the configured or as the real root path)."""
        if "\x00" in target:
            raise RpcError(EACCES, f"symlink target not allowed: {shown}")
        if target.startswith("/"):
            norm = posixpath.normpath(target)
            for base in (self.root_real, str(self.root)):
                if norm == base:
                    return True, []
                if norm.startswith(base.rstrip("/") + "/"):
                    rest = norm[len(base.rstrip("/")) + 1 :]
                    return True, [c for c in rest.split("/") if c and c != "."]
            raise RpcError(EACCES, f"symlink points outside the workspace: {shown}")
        return False, [c for c in target.split("/") if c and c != "."]

    def _walk(
        self,
        path: str,
        *,
        follow_final: bool,
        create_dirs: bool = False,
    ) -> tuple[list[int], list[str], str | None, os.stat_result | None, str | None]:
        """Resolve all but the final component; optionally follow a final symlink.

        Returns (fd stack, resolved parts of the parent, final name or None when the path names
        the directory at the top of the stack itself, lstat of the final or None if missing,
        the lexical form of the client path, which has been checked against the deny list).
        The caller owns the stack (stack[0] is the root fd and must not be closed) and must
        check the final component. With `create_dirs`, missing directories are created.
        """
        comps, lexical = self._split(path)
        # Checked first, so that a denied name's existence is not revealed.
        if lexical is not None and self.is_denied(lexical):
            raise RpcError(EACCES, f"denied by host policy: {path}")
        stack = [self._root_fd]
        parts: list[str] = []
        pending = deque(comps)
        links = 0
        creates = 0
        try:
            while pending:
                name = pending.popleft()
                if name == "..":
                    if not parts:
                        raise RpcError(EACCES, f"path escapes the workspace: {path}")
                    os.close(stack.pop())
                    parts.pop()
                    continue
                parent = stack[-1]
                if not pending:
                    # The final component: look at it without opening it.
                    try:
                        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    except FileNotFoundError:
                        st = None
                    except OSError as exc:
                        raise os_error(exc, path) from None
                    if follow_final and st is not None and stat.S_ISLNK(st.st_mode):
                        links += 1
                        self._splice(stack, parts, pending, name, parent, links, path)
                        continue
                    return stack, parts, name, st, lexical
                try:
                    fd = os.open(name, DIR_FLAGS, dir_fd=parent)
                except OSError as exc:
                    if exc.errno in _SYMLINK_ERRNOS:
                        try:
                            os.readlink(name, dir_fd=parent)
                        except OSError:
                            raise RpcError(
                                ENOTDIR, f"not a directory on the way to: {path}"
                            ) from None
                        links += 1
                        self._splice(stack, parts, pending, name, parent, links, path)
                        continue
                    if exc.errno == errno.ENOENT and create_dirs:
                        rel = "/".join([*parts, name])
                        if self.is_denied(rel, True) or self.is_protected(rel):
                            raise RpcError(EACCES, f"denied by host policy: {path}") from None
                        try:
                            os.mkdir(name, 0o777, dir_fd=parent)
                        except FileExistsError:
                            pass
                        except OSError as exc2:
                            raise os_error(exc2, path) from None
                        creates += 1  # bounds the retries if new directories keep vanishing
                        if creates > MAX_PATH_CHARS:
                            raise RpcError(EINVAL, f"path keeps changing: {path}") from None
                        pending.appendleft(name)  # open it (or follow what raced in) next round
                        continue
                    raise os_error(exc, path) from None
                stack.append(fd)
                parts.append(name)
            # The path ended in `..` or named the root: the target is the top of the stack.
            return stack, parts, None, None, lexical
        except BaseException:
            for fd in stack[1:]:
                os.close(fd)
            raise

    def _splice(
        self,
        stack: list[int],
        parts: list[str],
        pending: deque[str],
        name: str,
        parent: int,
        links: int,
        path: str,
    ) -> None:
        """Replace a symlink component by its target's components (the link's own location
        must not be denied either: `a -> .env` is refused even when `.env` is a link onward)."""
        if links > MAX_SYMLINKS:
            raise RpcError(EINVAL, f"too many levels of symbolic links: {path}")
        if self.is_denied("/".join([*parts, name])):
            raise RpcError(EACCES, f"denied by host policy: {path}")
        try:
            target = os.readlink(name, dir_fd=parent)
        except OSError as exc:
            raise os_error(exc, path) from None
        restart, tparts = self._target_parts(target, path)
        if restart:
            for fd in stack[1:]:
                os.close(fd)
            del stack[1:]
            parts.clear()
        pending.extendleft(reversed(tparts))

    def _release(self, stack: list[int], keep: int | None = None) -> None:
        for fd in stack[1:]:
            if fd != keep:
                os.close(fd)

    def _policy_checks(self, rel: str, is_dir: bool, path: str, access: Access) -> None:
        if self.is_denied(rel, is_dir):
            raise RpcError(EACCES, f"denied by host policy: {path}")
        if access == "write" and self.is_protected(rel):
            raise RpcError(EACCES, f"the host policy file cannot be changed: {path}")

    @staticmethod
    def _type_checks(st: os.stat_result, path: str) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if st.st_nlink > 1:
                raise RpcError(EACCES, f"file has several hard links; refused: {path}")
        elif not stat.S_ISDIR(mode):
            raise RpcError(EACCES, f"not a regular file or directory: {path}")

    def open(
        self,
        path: str,
        flags: int = os.O_RDONLY,
        *,
        access: Access = "read",
        positional_only: bool = False,
    ) -> Opened:
        """Open an existing file or directory (symlinks inside the workspace are followed).

        `flags` may not contain O_CREAT: new files are made by `parent()` + an atomic rename.
        The returned fd is blocking and close-on-exec; the caller closes it. With
        `positional_only` the caller promises to use only pread/fstat/getdents on it, for which
        O_NONBLOCK (set while opening, so a FIFO cannot block) makes no difference: the fd is
        then returned as opened, saving a syscall on the hot path.
        """
        if flags & (os.O_CREAT | os.O_TRUNC):
            raise ValueError("Workspace.open does not create or truncate files")
        if flags & (os.O_WRONLY | os.O_RDWR):
            access = "write"
        for _ in range(MAX_SYMLINKS + 1):
            stack, parts, name, st, lexical = self._walk(path, follow_final=True)
            try:
                if name is None:
                    # The path named a directory already on the stack.
                    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC, dir_fd=stack[-1])
                    rel = "/".join(parts)
                else:
                    rel = "/".join([*parts, name])
                    if st is None:
                        raise RpcError(ENOENT, f"no such file or directory: {path}")
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if rel != lexical or is_dir or access == "write":  # else checked already
                        self._policy_checks(rel, is_dir, path, access)
                    self._type_checks(st, path)  # before open: some devices act on open
                    try:
                        fd = os.open(
                            name, flags | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=stack[-1]
                        )
                    except OSError as exc:
                        if exc.errno in _SYMLINK_ERRNOS and exc.errno != errno.ENOTDIR:
                            continue  # became a symlink since the lstat: resolve again
                        raise os_error(exc, path) from None
            finally:
                self._release(stack)
            try:
                fst = os.fstat(fd)
                if st is None or stat.S_ISDIR(st.st_mode) != stat.S_ISDIR(fst.st_mode):
                    self._policy_checks(rel, stat.S_ISDIR(fst.st_mode), path, access)
                self._type_checks(fst, path)  # authoritative: what was actually opened
                if not positional_only:
                    # Clear O_NONBLOCK (F_SETFL sets exactly these status flags from our flags).
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags & _SETFL_MASK)
            except BaseException:
                os.close(fd)
                raise
            return Opened(fd, fst, rel)
        raise RpcError(EINVAL, f"path keeps changing while it is opened: {path}")

    # The brief's name for `open`.
    open_file = open

    @contextlib.contextmanager
    def opened(
        self, path: str, flags: int = os.O_RDONLY, *, access: Access = "read"
    ) -> Iterator[Opened]:
        """`open` as a context manager that closes the fd."""
        o = self.open(path, flags, access=access)
        try:
            yield o
        finally:
            os.close(o.fd)

    def open_dir(self, path: str) -> Opened:
        """Open a directory inside the workspace (ENOTDIR if it is a file)."""
        o = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        if not stat.S_ISDIR(o.st.st_mode):  # pragma: no cover - O_DIRECTORY already refuses
            os.close(o.fd)
            raise RpcError(ENOTDIR, f"not a directory: {path}")
        return o

    def stat(self, path: str, *, follow: bool = True) -> tuple[os.stat_result, str]:
        """lstat/stat a path without opening it (any file type); returns (stat, resolved rel)."""
        stack, parts, name, st, _lexical = self._walk(path, follow_final=follow)
        try:
            if name is None:
                st = os.stat(stack[-1])
                rel = "/".join(parts)
            else:
                rel = "/".join([*parts, name])
                if st is None:
                    raise RpcError(ENOENT, f"no such file or directory: {path}")
            if self.is_denied(rel, stat.S_ISDIR(st.st_mode)):
                raise RpcError(EACCES, f"denied by host policy: {path}")
            return st, rel
        finally:
            self._release(stack)

    def open_parent(
        self, path: str, *, follow_final: bool = False, create_parents: bool = False
    ) -> Parent:
        """Resolve the directory that holds `path`'s final component, for a change to it.

        With `follow_final` a final symlink is resolved (write through a link to its target);
        without it the link itself is the target (delete/move). The final component may be
        missing. Denied and protected paths are refused here (EACCES); so is the root itself.
        """
        _comps, lexical = self._split(path)
        if lexical is None:
            raise RpcError(EACCES, "the workspace root itself cannot be changed")
        if self.is_protected(lexical):
            raise RpcError(EACCES, f"the host policy file cannot be changed: {path}")
        for _ in range(MAX_SYMLINKS + 1):
            stack, parts, name, _st, _lex = self._walk(
                path, follow_final=follow_final, create_dirs=create_parents
            )
            if name is None:
                # `a/b/..`: the target is the directory on top of the stack; use its parent.
                if not parts:
                    self._release(stack)
                    raise RpcError(EACCES, "the workspace root itself cannot be changed")
                os.close(stack.pop())
                name = parts.pop()
            rel = "/".join([*parts, name])
            top = stack[-1]
            self._release(stack, keep=top)
            owned = top != self._root_fd
            try:
                if self.is_denied(rel, True):  # either kind: the final may not exist yet
                    raise RpcError(EACCES, f"denied by host policy: {path}")
                if self.is_protected(rel):
                    raise RpcError(EACCES, f"the host policy file cannot be changed: {path}")
            except BaseException:
                if owned:
                    os.close(top)
                raise
            return Parent(top, name, rel, owned)
        raise RpcError(
            EINVAL, f"path keeps changing while it is resolved: {path}"
        )  # pragma: no cover

    @contextlib.contextmanager
    def parent(
        self, path: str, *, follow_final: bool = False, create_parents: bool = False
    ) -> Iterator[Parent]:
        """`open_parent` as a context manager."""
        p = self.open_parent(path, follow_final=follow_final, create_parents=create_parents)
        try:
            yield p
        finally:
            p.close()

    def resolve_dir_path(self, path: str) -> str:
        """The real absolute host path of a directory inside the workspace (e.g. exec's cwd).

        Every component was resolved by the jail, so the string contains no symlink. A path
        string is only as good as the moment it was made; use `open_dir` when an fd will do.
        """
        o = self.open_dir(path)
        os.close(o.fd)
        return self.root_real if not o.rel else self.root_real + "/" + o.rel

    def relpath(self, host_path: str | os.PathLike[str]) -> str:
        """Workspace-relative form of an absolute host path inside the root ("" for the root).

        Lexical (no file system access); EACCES when the path is outside the root.
        """
        p = posixpath.normpath(os.fspath(host_path))
        if not p.startswith("/"):
            raise RpcError(EINVAL, "relpath() wants an absolute host path")
        for base in (self.root_real, str(self.root)):
            if p == base:
                return ""
            if p.startswith(base.rstrip("/") + "/"):
                return p[len(base.rstrip("/")) + 1 :]
        raise RpcError(EACCES, "path is outside the workspace")
