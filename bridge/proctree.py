"""Find, kill and reap every process a command started, including the ones that left its group.

A command runs as the leader of a new session and process group, so `killpg` reaches most of
what it starts. It does not reach a process that called `setsid()` (daemons, `setsid cmd &`)
and, once such a process's parent has died, the parent links in /proc no longer lead to it
either. So on Linux every command also carries a random cookie in its environment
(`KITE_EXEC_ID`). Children inherit it; /proc/<pid>/environ keeps the environment a process was
exec'd with even if it later unsets the variable. The same technique as Jenkins'
ProcessTreeKiller (BUILD_ID). Only a process that re-execs with a scrubbed environment *and*
leaves the session escapes; the host policy does not pretend to be a cgroup.

Reaping. A killed process whose parent died is re-parented to init, and in containers without
an init (docker without --init) nobody reaps it: it stays a zombie forever. `enable_subreaper()`
(called once by the server) makes orphans of commands re-parent to the bridge instead, and the
bridge then reaps exactly the zombies it can prove are command descendants: members of a
command's session/group or processes a terminate() scan found, and adopted orphans seen alive
with the cookie of a finished command. Never any other child: asyncio and `subprocess` are
`waitpid()`ing for the bridge's own children, and reaping one would steal its exit status.
(Command leaders are asyncio's; they are excluded by pid, and by cookie while the command runs.)

Signals are sent through a pidfd after checking the start time, so a pid recycled since the
scan is never hit. Without /proc (macOS, BSD) only the process group is signalled.

A bridge killed with SIGKILL (or by the OOM killer) runs no cleanup, and its commands, leaders of
their own sessions, would live on as orphans. So `enable_subreaper()` also starts a supervisor:
a small separate process (`python -c ...`, its own session so a terminal's Ctrl-C does not reach
it) that reads, on a pipe, which commands are running (cookie, leader pid and start time, kill
grace). Only the bridge holds the pipe's write end; the kernel closes it however the bridge dies.
At end of file the supervisor ends the tree of every command still listed, exactly as a
cancel would (`ProcessTree.terminate`), then exits. PR_SET_PDEATHSIG alone would not do: it
reaches only the direct child, not `sleep 300 &` inside a shell or a process that left the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

COOKIE_VAR = "KITE_EXEC_ID"
HAVE_PROC = sys.platform.startswith("linux") and os.path.isdir("/proc/self")
_DEAD_STATES = frozenset("ZXx")
_POLL_S = 0.02
_KILL_ROUNDS = 50  # SIGKILL sweeps; each catches what forked since the previous one
_PR_SET_CHILD_SUBREAPER = 36

_subreaper = False
# Cookies of commands still running: their processes (the leader above all) are not orphans.
_active_cookies: set[str] = set()
# Orphans of finished commands the bridge adopted, seen alive; reaped once they die.
_adopted: set[ProcRef] = set()


@dataclass(frozen=True, slots=True)
class ProcRef:
    """One process for its whole life: a pid alone can be recycled, (pid, start) cannot."""

    pid: int
    start: int  # start time in clock ticks since boot (field 22 of /proc/<pid>/stat)
    pgrp: int = field(default=0, compare=False)  # as seen by the scan that found it


@dataclass(frozen=True, slots=True)
class _Stat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    sid: int
    start: int


def _read(path: str, size: int = 4096) -> bytes | None:
    """Read a small /proc file without the io stack (this runs once per process per scan)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(pid: int) -> _Stat | None:
    data = _read(f"/proc/{pid}/stat")
    if not data:
        return None
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return _Stat(
            pid,
            fields[0].decode("ascii", "replace"),
            int(fields[1]),
            int(fields[2]),
            int(fields[3]),
            int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def _is_live(ref: ProcRef) -> bool:
    st = _stat(ref.pid)
    return st is not None and st.start == ref.start and st.state not in _DEAD_STATES


def _holds_pipe(pid: int, inodes: frozenset[int]) -> bool:
    if not inodes:
        return False
    wanted = {f"pipe:[{i}]" for i in inodes}
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{fd}") in wanted:
                return True
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _cookie_of(pid: int) -> str | None:
    env = _read(f"/proc/{pid}/environ")
    if not env:
        return None
    key = COOKIE_VAR.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode("ascii", "replace")
    return None


def _children_of_self() -> list[int]:
    pids: list[int] = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tids:
        data = _read(f"/proc/self/task/{tid}/children")
        if data:
            pids.extend(int(p) for p in data.split())
    return pids


def enable_subreaper() -> bool:
    """Make orphaned command descendants re-parent to this process (Linux; call once at start).

    Without it they go to init, which in a container without an init never reaps them. The
    attribute is per process and not inherited across fork, so it stays with the bridge.
    Also starts the supervisor that ends running commands if the bridge is killed.
    """
    global _subreaper
    if not HAVE_PROC:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    _SUPERVISOR.start()
    return _subreaper


def command_started(cookie: str) -> None:
    """Call before spawning: until `command_finished`, nothing with this cookie is adopted."""
    _active_cookies.add(cookie)
    _SUPERVISOR.send(f"+ {cookie}\n")


def command_spawned(cookie: str, tree: ProcessTree, grace: float) -> None:
    """Call once the leader runs: the supervisor can now also end its process group."""
    _SUPERVISOR.send(f"= {cookie} {tree.pid} {tree.not_before} {max(0.0, grace):.3f}\n")


def command_finished(cookie: str) -> None:
    """Call after the command's leader was reaped: adopt its orphans, reap dead adoptees."""
    _active_cookies.discard(cookie)
    _SUPERVISOR.send(f"- {cookie}\n")
    reap_adopted()


def reap_adopted() -> None:
    """Note live orphans of finished commands among our children; reap those that died.

    Cheap (our children only), and lazy: a daemon that dies lingers as a zombie until the next
    command finishes. Runs on the event loop thread, like command_started/finished.
    """
    if not HAVE_PROC or not (_subreaper or os.getpid() == 1):
        return
    for pid in _children_of_self():
        st = _stat(pid)
        if st is None or st.state in _DEAD_STATES or ProcRef(pid, st.start) in _adopted:
            continue
        cookie = _cookie_of(pid)
        if cookie is not None and cookie not in _active_cookies:
            _adopted.add(ProcRef(pid, st.start))
    me = os.getpid()
    for ref in list(_adopted):
        st = _stat(ref.pid)
        if st is None or st.start != ref.start:
            _adopted.discard(ref)
        elif st.state in _DEAD_STATES and st.ppid == me:
            _reap(ref.pid)
            _adopted.discard(ref)


def send_signal(ref: ProcRef, sig: int) -> bool:
    """Signal exactly the process `ref` names; False if it is gone (or not ours to signal)."""
    fd = -1
    try:
        fd = os.pidfd_open(ref.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        fd = -1  # no pidfd (old kernel / not Linux): a plain kill after the same check
    try:
        st = _stat(ref.pid)
        if st is None or st.start != ref.start:
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(ref.pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd >= 0:
            os.close(fd)


class ProcessTree:
    """The processes one command started: its session/group, their descendants, the cookie."""

    def __init__(self, pid: int | None, cookie: str | None = None, not_before: int = 0) -> None:
        """`pid` None: the leader is unknown or gone, so only the cookie identifies the tree
        (and only processes started at or after `not_before`, in clock ticks since boot)."""
        self.pid = pid if pid is not None else -1
        # Started with start_new_session=True: leader of session and group. None: no group.
        self.pgid: int | None = pid
        self._needle = f"\0{COOKIE_VAR}={cookie}\0".encode() if cookie else None
        st = _stat(pid) if HAVE_PROC and pid is not None else None
        # Anything of ours started at or after the leader; older processes are never candidates.
        self._not_before = st.start if st else not_before

    @property
    def not_before(self) -> int:
        """The leader's start time (clock ticks since boot), 0 if unknown."""
        return self._not_before

    def group_exists(self) -> bool:
        """Whether anything (zombies included) is still in the command's process group."""
        if self.pgid is None:
            return False
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _has_cookie(self, st: _Stat) -> bool:
        if self._needle is None or st.state in _DEAD_STATES:
            return False
        env = _read(f"/proc/{st.pid}/environ") or b""
        return self._needle in b"\0" + env + b"\0"

    def scan(self, *, daemons: bool = True, pipes: frozenset[int] = frozenset()) -> list[ProcRef]:
        """Live processes of this command. Blocking (/proc walk): call via a thread.

        With `daemons=False`, a process that left the session (found by the cookie alone)
        counts only if it holds one of the pipes whose inode numbers are in `pipes`.
        """
        return [
            ProcRef(st.pid, st.start, st.pgrp)
            for st in self._match(daemons, pipes)
            if st.state not in _DEAD_STATES
        ]

    def _match(self, daemons: bool, pipes: frozenset[int]) -> list[_Stat]:
        """This command's processes, zombies included (a zombie has no environ: no cookie)."""
        if not HAVE_PROC:
            return []
        me = os.getpid()
        stats: dict[int, _Stat] = {}
        children: dict[int, list[int]] = {}
        try:
            names = os.listdir("/proc")
        except OSError:
            return []
        for name in names:
            if not name.isdigit():
                continue
            st = _stat(int(name))
            if st is None or st.start < self._not_before:
                continue
            stats[st.pid] = st
            children.setdefault(st.ppid, []).append(st.pid)
        seeds = []
        for st in stats.values():
            if st.pid in (me, 1):
                continue
            in_group = self.pgid is not None and (
                st.pid == self.pid or st.pgrp == self.pgid or st.sid == self.pgid
            )
            if in_group or (self._has_cookie(st) and (daemons or _holds_pipe(st.pid, pipes))):
                seeds.append(st.pid)
        found: set[int] = set()
        while seeds:
            pid = seeds.pop()
            if pid in found or pid in (me, 1):
                continue
            found.add(pid)
            seeds.extend(children.get(pid, ()))
        return [stats[pid] for pid in sorted(found)]

    def _reap_dead(self, killed: Iterable[ProcRef]) -> None:
        """Reap the zombies of this tree that were re-parented to us (never the leader)."""
        me = os.getpid()
        candidates = {(st.pid, st.start) for st in self._match(False, frozenset())}
        candidates.update((r.pid, r.start) for r in killed)
        for pid, start in candidates:
            if pid == self.pid:
                continue  # asyncio's child: it reaps it
            st = _stat(pid)
            if st and st.start == start and st.state in _DEAD_STATES and st.ppid == me:
                _reap(pid)

    def _killpg(self, sig: int) -> None:
        if self.pgid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    async def terminate(
        self, grace: float, *, daemons: bool = True, pipes: frozenset[int] = frozenset()
    ) -> int:
        """SIGTERM the whole tree, give it `grace` seconds, SIGKILL whatever is left.

        Safe to call more than once or concurrently (signals are idempotent). Returns how many
        live processes the first scan found. Returns only when none is left that it can see,
        after reaping the dead ones that were re-parented to the bridge.
        """
        if not HAVE_PROC:
            return await self._terminate_group_only(grace)
        refs = await asyncio.to_thread(self.scan, daemons=daemons, pipes=pipes)
        if refs:
            # One SIGTERM each: the group at once, the escaped ones one by one (some programs
            # treat a second SIGTERM as "abort the clean shutdown").
            if any(r.pgrp == self.pgid for r in refs):
                self._killpg(signal.SIGTERM)
                self._killpg(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            for ref in refs:
                if ref.pgrp != self.pgid:
                    send_signal(ref, signal.SIGTERM)
                    send_signal(ref, signal.SIGCONT)
            deadline = time.monotonic() + max(0.0, grace)
            while time.monotonic() < deadline and any(_is_live(r) for r in refs):
                await asyncio.sleep(_POLL_S)
        killed = set(refs)
        for _ in range(_KILL_ROUNDS):
            left = await asyncio.to_thread(self.scan, daemons=daemons, pipes=pipes)
            if not left:
                break
            killed.update(left)
            if any(r.pgrp == self.pgid for r in left):
                self._killpg(signal.SIGKILL)  # atomic for the group, even while it forks
            for ref in left:
                send_signal(ref, signal.SIGKILL)
            await asyncio.sleep(0.005)
        # All dead: every re-parenting has happened (it precedes becoming a zombie).
        await asyncio.to_thread(self._reap_dead, killed)
        return len(refs)

    async def _terminate_group_only(self, grace: float) -> int:
        if not self.group_exists():
            return 0
        self._killpg(signal.SIGTERM)
        self._killpg(signal.SIGCONT)
        deadline = time.monotonic() + max(0.0, grace)
        while time.monotonic() < deadline and self.group_exists():
            await asyncio.sleep(_POLL_S)
        self._killpg(signal.SIGKILL)
        return 1


# -- the supervisor: ends running commands when the bridge dies without cleaning up -----------

_SUPERVISOR_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from bridge.proctree import supervise; supervise(sys.stdin.buffer)"
)


class _Supervisor:
    """The bridge's end of the pipe to the supervisor process (see the module docstring)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._fd = -1

    @property
    def running(self) -> bool:
        return self._fd >= 0 and self.proc is not None and self.proc.poll() is None

    def start(self) -> bool:
        """Start it once per process (Linux only); False if it could not be started."""
        if self._fd >= 0 or not HAVE_PROC:
            return self._fd >= 0
        read_fd, write_fd = os.pipe()  # both non-inheritable: commands never hold the pipe
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SUPERVISOR_CODE, root],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # no terminal signals: it must outlive the bridge
            )
        except OSError:
            os.close(write_fd)
            return False
        finally:
            os.close(read_fd)
        self._fd = write_fd
        return True

    def send(self, line: str) -> None:
        """One whole line per write (well under PIPE_BUF, so atomic)."""
        if self._fd < 0:
            return
        try:
            os.write(self._fd, line.encode("ascii"))
        except OSError:  # the supervisor is gone: commands are still ended on a clean exit
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


_SUPERVISOR = _Supervisor()


def supervisor_pid() -> int | None:
    """The supervisor's pid in this process, if one runs (tests and diagnostics)."""
    return _SUPERVISOR.proc.pid if _SUPERVISOR.running and _SUPERVISOR.proc else None


def supervise(stream: Any) -> None:
    """The supervisor process: track commands from `stream`; at its end, end what is left.

    Lines: `+ COOKIE` (about to spawn), `= COOKIE PID START GRACE` (spawned), `- COOKIE`
    (finished). Malformed lines (a bridge killed mid-write) are ignored.
    """
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    running: dict[str, tuple[int | None, int, float]] = {}
    for raw in stream:
        parts = raw.decode("ascii", "replace").split()
        try:
            if parts[0] == "+" and len(parts) == 2:
                running[parts[1]] = (None, 0, 2.0)
            elif parts[0] == "=" and len(parts) == 5:
                running[parts[1]] = (int(parts[2]), int(parts[3]), float(parts[4]))
            elif parts[0] == "-" and len(parts) == 2:
                running.pop(parts[1], None)
        except (IndexError, ValueError):
            continue
    if running:
        asyncio.run(_end_all(running))


async def _end_all(running: dict[str, tuple[int | None, int, float]]) -> None:
    trees = []
    for cookie, (pid, start, grace) in running.items():
        if pid is not None:
            st = _stat(pid)
            if st is None or st.start != start:
                pid = None  # the leader is gone (its pid may be someone else's now)
        trees.append(ProcessTree(pid, cookie, not_before=start).terminate(grace))
    await asyncio.gather(*trees, return_exceptions=True)
