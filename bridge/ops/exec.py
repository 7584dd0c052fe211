"""`exec.run`: run a command in the workspace, stream its output, leave no process behind.

Args: exactly one of `argv` (list of strings, run directly, no shell) or `command` (a string
run by `/bin/sh -c`: POSIX sh, the same on every host, unlike the user's `$SHELL`), plus
`cwd` (workspace-relative directory, default "."), `timeout_s` (default and cap from the host
policy), `env` (extra variables; names the host policy denies are refused), `stdin` (text
written then closed; otherwise stdin is /dev/null).

Events: `stdout` / `stderr` with text (UTF-8, decoded incrementally, invalid bytes replaced),
one per read from the pipe; `truncated` `{"limit_bytes": N}` once, when stdout+stderr together
pass the policy's output cap. After that nothing more is streamed, but the pipes are still
drained (a child blocked on a full pipe would never finish) and the last `TAIL_BYTES` of what
was not streamed come back in the result as `tail`, because the end of a long build log is
usually where the error is.

Result: `exit_code` (negative signal number when killed by a signal), `timed_out`,
`truncated`, `duration_ms`, `stdout_bytes`/`stderr_bytes` (all bytes the command wrote,
streamed or not), `leftovers_killed`, `timeout_s` (the timeout applied), and when truncated
`omitted_bytes` and `tail`.

Process lifetime: the command leads a new session/process group. On timeout, cancellation
(client `cancel` or disconnect) and bridge shutdown the whole tree is ended, including
processes that left the group (see bridge.proctree): SIGTERM, `exec_kill_grace_s`, SIGKILL.
If the bridge itself is killed (SIGKILL, OOM), its supervisor process does the same for every
command still running (bridge.proctree, "the supervisor").
When the command exits by itself, whatever is still in its process group, or still holds its
output pipes, is ended the same way and counted in `leftovers_killed`: a request's processes do
not outlive it. A process that deliberately daemonized (new session and its own output, e.g.
`setsid -f server >log 2>&1`) is left running, as a terminal would.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import fnmatch
import functools
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from agent_core.rpc.errors import EACCES, EINVAL, EIO, ENOENT, ETOOBIG, RpcError
from bridge import proctree
from bridge.ops.base import OpContext, arg_str, op
from bridge.proctree import COOKIE_VAR, ProcessTree

SHELL = "/bin/sh"
# One read, one event. 32 KiB of ordinary text still fits one Noise frame as a JSON envelope;
# larger envelopes would take the (correct but costlier) chunked-envelope path.
READ_SIZE = 32 * 1024
TAIL_BYTES = 8 * 1024
# After the command exits, how long its pipes may stay open before we look for what holds them.
LINGER_S = 0.2
# After a kill, how long to wait for the pipes to reach EOF before giving up on them.
AFTER_KILL_S = 2.0
AUDIT_MAX_CHARS = 1000
_ARGS = frozenset({"argv", "command", "cwd", "timeout_s", "env", "stdin"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_T = TypeVar("_T")

# Every command currently running, with the kill grace it was started under.
_RUNNING: dict[ProcessTree, float] = {}


def enable_subreaper() -> bool:
    """Have orphaned command processes re-parent to the bridge so it can reap them (Linux).

    The server calls this once at start; see bridge.proctree for why and what gets reaped.
    """
    return proctree.enable_subreaper()


async def kill_all_running() -> None:
    """End every running command's process tree (graceful bridge shutdown)."""
    trees = list(_RUNNING.items())
    if trees:
        await asyncio.gather(
            *(tree.terminate(grace) for tree, grace in trees), return_exceptions=True
        )


# -- arguments --------------------------------------------------------------------------------


def _no_nul(value: str, what: str) -> str:
    if "\0" in value:
        raise RpcError(EINVAL, f"{what} must not contain NUL characters")
    return value


def _parse_command(args: dict[str, Any]) -> tuple[list[str], list[str] | str]:
    """The argv to execute, and what the audit log shows."""
    has_argv, has_command = "argv" in args, "command" in args
    if has_argv == has_command:
        raise RpcError(EINVAL, "give exactly one of 'argv' (list of strings) or 'command' (string)")
    if has_argv:
        argv = args["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise RpcError(EINVAL, "'argv' must be a non-empty list of strings")
        if not argv[0]:
            raise RpcError(EINVAL, "'argv[0]' must not be empty")
        for a in argv:
            _no_nul(a, "'argv'")
        return list(argv), [a[:AUDIT_MAX_CHARS] for a in argv[:200]]
    command = args["command"]
    if not isinstance(command, str) or not command.strip():
        raise RpcError(EINVAL, "'command' must be a non-empty string")
    _no_nul(command, "'command'")
    # "--": a command string starting with "-" is a command, not a shell option.
    return [SHELL, "-c", "--", command], command[:AUDIT_MAX_CHARS]


def _parse_timeout(args: dict[str, Any], policy: Any) -> float:
    cap = float(policy.exec_timeout_max_s)
    v = args.get("timeout_s")
    if v is None:
        return min(float(policy.exec_timeout_default_s), cap)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise RpcError(EINVAL, "'timeout_s' must be a number")
    if v <= 0:
        raise RpcError(EINVAL, "'timeout_s' must be > 0")
    return min(float(v), cap)


@functools.lru_cache(maxsize=8)
def _env_deny_re(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """All env_deny globs as one case-insensitive regex (a command's env is checked per run)."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


def _env_denied(name: str, patterns: Iterable[str]) -> bool:
    return _env_deny_re(tuple(patterns)).match(name) is not None


def _parse_env(args: dict[str, Any], policy: Any) -> dict[str, str]:
    env = args.get("env", {})
    if not isinstance(env, dict):
        raise RpcError(EINVAL, "'env' must be an object of strings")
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise RpcError(EINVAL, f"environment variable name {name!r} is not an identifier")
        if not isinstance(value, str):
            raise RpcError(EINVAL, f"environment variable {name} must be a string")
        _no_nul(value, f"environment variable {name}")
        if _env_denied(name, policy.env_deny):
            raise RpcError(EACCES, f"environment variable {name} is denied by host policy")
    return dict(env)


def child_env(policy: Any, extra: dict[str, str], cookie: str) -> dict[str, str]:
    """The bridge's environment without the host's secrets, plus the client's variables.

    `KITE=1` lets scripts notice they run under Kite; the cookie lets proctree find the
    command's processes (clients cannot set it: `KITE_*` is denied).
    """
    env = {k: v for k, v in os.environ.items() if not _env_denied(k, policy.env_deny)}
    env.update(extra)
    env["KITE"] = "1"
    env[COOKIE_VAR] = cookie
    return env


def _encode(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RpcError(EINVAL, f"{what} is not valid Unicode text") from exc


# -- the child's pipes ------------------------------------------------------------------------


class _Pipes(asyncio.SubprocessProtocol):
    """stdout/stderr as StreamReaders (they pause the pipe when nobody reads: backpressure),
    and a future for the child's exit that, unlike `Process.wait()`, does not also wait for
    the pipes to close (a background process holding them would hang it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stdout = asyncio.StreamReader(limit=2 * READ_SIZE)
        self.stderr = asyncio.StreamReader(limit=2 * READ_SIZE)
        self.exited: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        for fd, reader in ((1, self.stdout), (2, self.stderr)):
            pipe = transport.get_pipe_transport(fd)
            assert pipe is not None
            reader.set_transport(pipe)

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if fd in (1, 2):
            (self.stdout if fd == 1 else self.stderr).feed_data(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in (1, 2):
            reader = self.stdout if fd == 1 else self.stderr
            if exc is None:
                reader.feed_eof()
            else:
                reader.set_exception(exc)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _Output:
    """Streams both pipes to the client under one shared byte cap."""

    def __init__(self, ctx: OpContext, cap: int) -> None:
        self.ctx = ctx
        self.cap = max(0, cap)
        self.emitted = 0
        self.counts = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self.omitted = 0
        self._tail = bytearray()

    def _keep(self, data: bytes) -> None:
        self.omitted += len(data)
        self._tail += data
        if len(self._tail) > TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]

    def tail(self) -> str:
        data = bytes(self._tail)
        if len(data) == TAIL_BYTES:  # cut at an arbitrary byte: skip a torn first character
            i = 0
            while i < min(3, len(data)) and 0x80 <= data[i] < 0xC0:
                i += 1
            data = data[i:]
        return data.decode("utf-8", "replace")

    async def pump(self, name: str, reader: asyncio.StreamReader) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        emit = self.ctx.emit
        while data := await reader.read(READ_SIZE):
            self.counts[name] += len(data)
            if self.truncated:
                self._keep(data)
                continue
            room = self.cap - self.emitted
            if len(data) <= room:
                self.emitted += len(data)
                if text := decoder.decode(data):
                    await emit(name, text)
                continue
            # Crossing the cap: bookkeeping first (the other pipe runs while we await).
            self.emitted, self.truncated = self.cap, True
            self._keep(data[room:])
            if text := decoder.decode(data[:room]):
                await emit(name, text)
            await emit("truncated", {"limit_bytes": self.cap})
        if not self.truncated and (text := decoder.decode(b"", final=True)):
            await emit(name, text)


# -- waiting ----------------------------------------------------------------------------------


def _raise_failed(tasks: Iterable[asyncio.Future[Any]]) -> None:
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


async def _wait_exit(
    exited: asyncio.Future[None], pumps: list[asyncio.Task[None]], until: float
) -> bool:
    """Wait for the child to exit until the monotonic deadline `until`; False on timeout.

    A pump that fails (the client went away mid-emit) ends the wait with its exception.
    """
    pending: set[asyncio.Future[Any]] = {exited, *(p for p in pumps if not p.done())}
    while not exited.done():
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        done, pending = await asyncio.wait(
            pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        _raise_failed(done)
    return True


async def _drain(pumps: list[asyncio.Task[None]], timeout: float) -> bool:
    """Wait up to `timeout` s for both pipes to reach EOF and be streamed; True if they did."""
    pending = [p for p in pumps if not p.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(0.0, timeout))
    _raise_failed(pumps)
    return all(p.done() for p in pumps)


async def _uncancellable(aw: Awaitable[_T]) -> _T:
    """Run cleanup to completion even if the calling task is cancelled (again) meanwhile."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def _pipe_inodes(transport: asyncio.SubprocessTransport) -> frozenset[int]:
    """Inode numbers of the child's stdout/stderr pipes, to recognise who still holds them."""
    inodes = set()
    for fd in (1, 2):
        pipe = transport.get_pipe_transport(fd)
        f = pipe.get_extra_info("pipe") if pipe is not None else None
        if f is not None:
            with contextlib.suppress(OSError, ValueError):
                inodes.add(os.fstat(f.fileno()).st_ino)
    return frozenset(inodes)


def _spawn_error(exc: OSError, argv: list[str], cwd: str) -> RpcError:
    if exc.filename == cwd or exc.filename == os.fsencode(cwd):
        return RpcError(ENOENT, "the working directory vanished")
    if isinstance(exc, FileNotFoundError):
        return RpcError(ENOENT, f"command not found: {argv[0][:200]}")
    if isinstance(exc, PermissionError):
        return RpcError(EACCES, f"not executable: {argv[0][:200]}")
    if exc.errno == errno.E2BIG:
        return RpcError(ETOOBIG, "argument list too long")
    return RpcError(EIO, f"could not start the command: {exc.strerror or exc}")


# -- the op -----------------------------------------------------------------------------------


@op("exec.run", mutates=True)
async def exec_run(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    """Run one command; see the module docstring for the contract."""
    policy = ctx.policy
    if not policy.exec_enabled:
        raise RpcError(EACCES, "command execution is disabled by host policy")
    unknown = sorted(set(args) - _ARGS)
    if unknown:
        # repr: a name that is no valid Unicode (a lone surrogate) must not break the reply.
        raise RpcError(EINVAL, f"unknown argument(s): {', '.join(map(repr, unknown))}")
    argv, shown = _parse_command(args)
    ctx.audit["command"] = shown
    cwd_rel = arg_str(args, "cwd", ".")
    ctx.audit["cwd"] = cwd_rel
    timeout = _parse_timeout(args, policy)
    extra_env = _parse_env(args, policy)
    stdin_text = args.get("stdin")
    if stdin_text is not None and not isinstance(stdin_text, str):
        raise RpcError(EINVAL, "'stdin' must be a string")
    stdin_data = _encode(stdin_text, "'stdin'") if stdin_text is not None else None
    cwd = ctx.workspace.resolve_dir_path(cwd_rel)
    cookie = secrets.token_hex(16)
    env = child_env(policy, extra_env, cookie)
    grace = float(policy.exec_kill_grace_s)

    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    deadline = t0 + timeout
    proctree.command_started(cookie)
    try:
        transport, pipes = await loop.subprocess_exec(
            lambda: _Pipes(loop),
            *argv,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        proctree.command_finished(cookie)
        raise _spawn_error(exc, argv, cwd) from exc
    except (ValueError, UnicodeError) as exc:
        proctree.command_finished(cookie)
        raise RpcError(EINVAL, f"cannot pass these arguments to a process: {exc}") from exc
    except BaseException:
        proctree.command_finished(cookie)
        raise

    tree = ProcessTree(transport.get_pid(), cookie)
    _RUNNING[tree] = grace
    proctree.command_spawned(cookie, tree, grace)
    out = _Output(ctx, int(policy.exec_output_cap_bytes))
    pumps = [
        loop.create_task(out.pump("stdout", pipes.stdout)),
        loop.create_task(out.pump("stderr", pipes.stderr)),
    ]
    if stdin_data is not None:
        writer = transport.get_pipe_transport(0)
        assert isinstance(writer, asyncio.WriteTransport)
        writer.write(stdin_data)  # buffered by the transport; EPIPE if unread is ignored
        writer.close()  # closes once the buffer is flushed: the child sees EOF

    timed_out = False
    leftovers = 0
    try:
        if not await _wait_exit(pipes.exited, pumps, deadline):
            timed_out = True
            await tree.terminate(grace)
            await _wait_exit(pipes.exited, pumps, time.monotonic() + AFTER_KILL_S)
            await _drain(pumps, AFTER_KILL_S)
        elif not await _drain(pumps, min(LINGER_S, deadline - time.monotonic())) or (
            tree.group_exists()
        ):
            # Exited, but something it started lives on: in its group, or holding the pipes.
            # (Or the client is slow to take events: then this finds nothing and we keep
            # streaming until the deadline.)
            leftovers = await tree.terminate(grace, daemons=False, pipes=_pipe_inodes(transport))
            await _drain(pumps, max(AFTER_KILL_S, deadline - time.monotonic()))
    except BaseException:
        # Cancelled (client cancel/disconnect) or the client stopped taking events.
        await _uncancellable(tree.terminate(grace))
        raise
    finally:
        _RUNNING.pop(tree, None)
        code = transport.get_returncode()
        ctx.audit["exit_code"] = code
        ctx.audit["timed_out"] = timed_out
        for p in pumps:
            p.cancel()  # no-op when done; abandons a pipe still held after everything above
        transport.close()
        await _uncancellable(asyncio.gather(*pumps, return_exceptions=True))
        proctree.command_finished(cookie)

    result: dict[str, Any] = {
        "exit_code": code if code is not None else -signal.SIGKILL,
        "timed_out": timed_out,
        "truncated": out.truncated,
        "duration_ms": round((time.monotonic() - t0) * 1000),
        "stdout_bytes": out.counts["stdout"],
        "stderr_bytes": out.counts["stderr"],
        "leftovers_killed": leftovers,
        "timeout_s": timeout,
    }
    if out.truncated:
        result["omitted_bytes"] = out.omitted
        result["tail"] = out.tail()
    ctx.audit["bytes"] = out.counts["stdout"] + out.counts["stderr"]
    return result
