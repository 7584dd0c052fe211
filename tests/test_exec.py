"""exec.run against real subprocesses and the real workspace jail: streaming, limits,
environment, and process-tree cleanup.

Liveness: a killed process counts as gone when `os.kill(pid, 0)` says so, or when it is a zombie.
PID 1 in some containers (this one included) never reaps orphans; a zombie has exited all the
same and holds nothing but its pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.rpc.errors import EACCES, EINVAL, ENOENT, ENOTDIR, RpcError
from bridge import proctree
from bridge.jail import Workspace
from bridge.ops import exec as exec_ops
from bridge.ops.base import REGISTRY, OpContext
from bridge.ops.exec import exec_run, kill_all_running
from bridge.policy import Policy


class Recorder:
    """Collects events with their arrival time; can wake a test when some text shows up."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, float]] = []
        self.waiters: list[tuple[Callable[[str], bool], asyncio.Event]] = []

    async def emit(self, name: str, data: Any) -> None:
        self.events.append((name, data, time.monotonic()))
        for pred, ev in self.waiters:
            if pred(self.text("stdout")):
                ev.set()

    def when(self, pred: Callable[[str], bool]) -> asyncio.Event:
        ev = asyncio.Event()
        self.waiters.append((pred, ev))
        return ev

    def text(self, name: str) -> str:
        return "".join(d for n, d, _ in self.events if n == name)

    def names(self) -> list[str]:
        return [n for n, _, _ in self.events]


def fast_policy(**kw: Any) -> Policy:
    kw.setdefault("exec_kill_grace_s", 0.2)
    return Policy(**kw)


_open_workspaces: list[Workspace] = []


@pytest.fixture(autouse=True)
def _close_workspaces() -> Iterator[None]:
    yield
    while _open_workspaces:
        _open_workspaces.pop().close()


def make_ctx(root: Path, policy: Policy | None = None, rec: Recorder | None = None) -> OpContext:
    async def send_chunk(payload: bytes, final: bool) -> None:
        raise AssertionError("exec.run sends no chunks")

    async def recv_chunks() -> AsyncIterator[bytes]:
        return
        yield b""

    policy = policy or fast_policy()
    workspace = Workspace(root, policy)
    _open_workspaces.append(workspace)
    return OpContext(
        request_id=1,
        device_id="test",
        workspace=workspace,
        policy=policy,
        snapshots=None,  # type: ignore[arg-type]
        emit=(rec or Recorder()).emit,
        send_chunk=send_chunk,
        recv_chunks=recv_chunks,
    )


def run(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(exec_run(ctx, args))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def pids_in(text: str) -> list[int]:
    return [int(w) for w in text.split() if w.isdigit()]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


def test_registered_as_mutating_task_op() -> None:
    spec = REGISTRY["exec.run"]
    # Mutating (refused read-only) and never inline: it runs long and streams.
    assert spec.handler is exec_run and spec.mutates and not spec.inline


def test_stdout_streams_before_the_command_ends(ws: Path) -> None:
    rec = Recorder()
    t0 = time.monotonic()
    res = run(make_ctx(ws, rec=rec), {"command": "echo first; sleep 0.6; echo second"})
    t_end = time.monotonic()
    assert res["exit_code"] == 0 and not res["timed_out"] and not res["truncated"]
    assert rec.text("stdout") == "first\nsecond\n"
    first_at = next(t for n, d, t in rec.events if n == "stdout" and "first" in d)
    assert first_at - t0 < 0.4 < t_end - first_at  # streamed, not buffered until exit
    assert res["stdout_bytes"] == 13 and res["stderr_bytes"] == 0
    assert "stdout" not in res and res["duration_ms"] >= 500


def test_stderr_is_a_separate_stream(ws: Path) -> None:
    rec = Recorder()
    res = run(make_ctx(ws, rec=rec), {"command": "echo out; echo err >&2"})
    assert rec.text("stdout") == "out\n" and rec.text("stderr") == "err\n"
    assert (res["stdout_bytes"], res["stderr_bytes"]) == (4, 4)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"argv": ["true"]}, 0),
        ({"command": "exit 3"}, 3),
        ({"argv": ["sh", "-c", "kill -TERM $$"]}, -signal.SIGTERM),
        ({"command": "kill -KILL $$"}, -signal.SIGKILL),
    ],
)
def test_exit_codes(ws: Path, args: dict[str, Any], code: int) -> None:
    ctx = make_ctx(ws)
    res = run(ctx, args)
    assert res["exit_code"] == code and not res["timed_out"]
    assert ctx.audit["exit_code"] == code


def test_argv_is_not_shell_interpreted(ws: Path) -> None:
    rec = Recorder()
    argv = ["printf", "%s|", "a b", "'q' \"d\"", "$HOME", "*", "; echo no"]
    res = run(make_ctx(ws, rec=rec), {"argv": argv})
    assert res["exit_code"] == 0
    assert rec.text("stdout") == "a b|'q' \"d\"|$HOME|*|; echo no|"


def test_shell_command_with_pipes_and_audit(ws: Path) -> None:
    rec = Recorder()
    ctx = make_ctx(ws, rec=rec)
    cmd = "printf 'b\\na\\n' | sort | tr a-z A-Z"
    res = run(ctx, {"command": cmd})
    assert res["exit_code"] == 0 and rec.text("stdout") == "A\nB\n"
    assert ctx.audit["command"] == cmd


def test_command_starting_with_dash_is_not_a_shell_option(ws: Path) -> None:
    res = run(make_ctx(ws), {"command": "-x"})
    assert res["exit_code"] == 127  # "-x: not found", not "sh started with -x"


def test_audit_truncates_long_commands(ws: Path) -> None:
    ctx = make_ctx(ws)
    run(ctx, {"command": "true " + "x" * 5000})
    assert len(ctx.audit["command"]) == 1000


def test_cwd_inside_the_workspace(ws: Path) -> None:
    (ws / "sub" / "deep").mkdir(parents=True)
    rec = Recorder()
    res = run(make_ctx(ws, rec=rec), {"command": "pwd -P", "cwd": "sub/deep"})
    assert res["exit_code"] == 0
    assert rec.text("stdout").strip() == os.path.realpath(ws / "sub" / "deep")
    rec = Recorder()
    run(make_ctx(ws, rec=rec), {"command": "pwd -P"})
    assert rec.text("stdout").strip() == os.path.realpath(ws)


@pytest.mark.parametrize(
    ("cwd", "code"),
    [
        ("..", EACCES),
        ("sub/../..", EACCES),
        ("out", EACCES),
        ("out/..", EACCES),
        ("/tmp", EACCES),
        ("nope", ENOENT),
        ("file.txt", ENOTDIR),
    ],
)
def test_cwd_escapes_are_refused(ws: Path, tmp_path: Path, cwd: str, code: str) -> None:
    (ws / "sub").mkdir()
    (tmp_path / "outside").mkdir()
    (ws / "out").symlink_to(tmp_path / "outside")
    (ws / "file.txt").write_text("x")
    rec = Recorder()
    with pytest.raises(RpcError) as ei:
        run(make_ctx(ws, rec=rec), {"command": "touch pwned", "cwd": cwd})
    assert ei.value.code == code
    assert not (tmp_path / "outside" / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert rec.events == []


def test_timeout_kills_a_term_ignoring_command_and_its_child(ws: Path) -> None:
    rec = Recorder()
    cmd = 'trap "" TERM; sleep 1000 & echo $!; echo $$; sleep 1000'
    t0 = time.monotonic()
    res = run(make_ctx(ws, rec=rec), {"command": cmd, "timeout_s": 0.5})
    elapsed = time.monotonic() - t0
    pids = pids_in(rec.text("stdout"))
    assert len(pids) == 2
    assert res["timed_out"] is True and res["exit_code"] == -signal.SIGKILL
    assert all(gone(p) for p in pids), pids
    assert 0.5 <= elapsed < 3


def test_timeout_finds_a_daemon_that_left_the_session(ws: Path) -> None:
    # The daemon's parent exits at once: it is re-parented to init, in its own session and
    # group, with its output elsewhere. Only the environment cookie leads to it.
    rec = Recorder()
    cmd = "setsid sh -c 'sleep 1000 >/dev/null 2>&1 </dev/null & echo $!'; sleep 1000"
    res = run(make_ctx(ws, rec=rec), {"command": cmd, "timeout_s": 0.5})
    (pid,) = pids_in(rec.text("stdout"))
    assert res["timed_out"] is True
    assert gone(pid)


def test_cancellation_kills_the_tree_and_raises(ws: Path) -> None:
    rec = Recorder()
    cmd = "trap '' TERM; setsid sleep 1000 & echo $!; sleep 1000 & echo $!; echo $$; wait"

    async def main() -> list[int]:
        ready = rec.when(lambda s: len(pids_in(s)) == 3)
        task = asyncio.ensure_future(exec_run(make_ctx(ws, rec=rec), {"command": cmd}))
        await asyncio.wait_for(ready.wait(), 5)
        pids = pids_in(rec.text("stdout"))
        assert not any(gone(p) for p in pids)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids

    pids = asyncio.run(main())
    assert all(gone(p) for p in pids), pids
    assert not exec_ops._RUNNING


def test_kill_all_running_ends_every_command(ws: Path) -> None:
    async def main() -> tuple[list[dict[str, Any]], list[int]]:
        recs = [Recorder(), Recorder()]
        ready = [r.when(lambda s: len(pids_in(s)) == 1) for r in recs]
        tasks = [
            asyncio.ensure_future(exec_run(make_ctx(ws, rec=r), {"command": "echo $$; sleep 1000"}))
            for r in recs
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 5)
        await kill_all_running()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return results, [p for r in recs for p in pids_in(r.text("stdout"))]

    results, pids = asyncio.run(main())
    assert [r["exit_code"] for r in results] == [-signal.SIGTERM, -signal.SIGTERM]
    assert all(gone(p) for p in pids)


def test_background_leftovers_are_ended_when_the_command_exits(ws: Path) -> None:
    # One holds the output pipe (would hang a naive reader), one has its own output.
    rec = Recorder()
    cmd = "sleep 1000 & echo $!; sleep 1000 >/dev/null 2>&1 & echo $!"
    t0 = time.monotonic()
    res = run(make_ctx(ws, rec=rec), {"command": cmd, "timeout_s": 20})
    pids = pids_in(rec.text("stdout"))
    assert time.monotonic() - t0 < 3 and not res["timed_out"]
    assert res["exit_code"] == 0 and res["leftovers_killed"] == 2
    assert len(pids) == 2 and all(gone(p) for p in pids)


def test_escaped_process_holding_the_pipe_is_ended(ws: Path) -> None:
    rec = Recorder()
    t0 = time.monotonic()
    res = run(make_ctx(ws, rec=rec), {"command": "setsid sleep 1000 & echo $!", "timeout_s": 20})
    (pid,) = pids_in(rec.text("stdout"))
    assert (
        time.monotonic() - t0 < 3
        and not res["timed_out"]
        and res["leftovers_killed"] == 1
        and gone(pid)
    )


def test_a_real_daemon_is_left_alone_after_a_normal_exit(ws: Path) -> None:
    rec = Recorder()
    cmd = "setsid sh -c 'sleep 1000 >/dev/null 2>&1 </dev/null & echo $!'"
    res = run(make_ctx(ws, rec=rec), {"command": cmd})
    (pid,) = pids_in(rec.text("stdout"))
    try:
        assert res["exit_code"] == 0 and res["leftovers_killed"] == 0
        assert not gone(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_output_cap_truncates_and_the_command_completes(ws: Path) -> None:
    rec = Recorder()
    policy = fast_policy(exec_output_cap_bytes=1000)
    res = run(make_ctx(ws, policy, rec), {"command": "seq 1 20000; echo bye >&2"})
    total = len(subprocess.run(["seq", "1", "20000"], capture_output=True).stdout)
    assert res["exit_code"] == 0 and res["truncated"] is True and not res["timed_out"]
    streamed = rec.text("stdout") + rec.text("stderr")
    assert len(streamed.encode()) == 1000 and streamed.startswith("1\n2\n3\n")
    assert rec.names().count("truncated") == 1
    marker = next(d for n, d, _ in rec.events if n == "truncated")
    assert marker == {"limit_bytes": 1000}
    assert rec.names()[-1] == "truncated"  # nothing streamed after the marker
    assert res["stdout_bytes"] == total and res["stderr_bytes"] == 4
    assert res["omitted_bytes"] == total + 4 - 1000
    assert res["tail"].endswith("19999\n20000\n") or res["tail"].endswith("bye\n")
    assert len(res["tail"].encode()) <= exec_ops.TAIL_BYTES


def test_heavy_output_is_coalesced(ws: Path) -> None:
    rec = Recorder()
    res = run(make_ctx(ws, rec=rec), {"command": "head -c 1000000 /dev/zero | tr '\\0' a"})
    assert res["stdout_bytes"] == 1_000_000 and len(rec.text("stdout")) == 1_000_000
    assert len(rec.events) <= 1_000_000 // 4096


def test_utf8_split_across_reads_is_preserved(ws: Path) -> None:
    rec = Recorder()
    # "é" is \303\251, "€" is \342\202\254; each is cut in two by a pause between writes.
    cmd = r"printf '\303'; sleep 0.2; printf '\251 \342\202'; sleep 0.2; printf '\254\n'"
    res = run(make_ctx(ws, rec=rec), {"command": cmd})
    assert res["exit_code"] == 0
    assert rec.text("stdout") == "é €\n"
    assert len([n for n in rec.names() if n == "stdout"]) >= 2


def test_invalid_utf8_is_replaced_not_fatal(ws: Path) -> None:
    rec = Recorder()
    run(make_ctx(ws, rec=rec), {"command": r"printf 'a\377b'"})
    assert rec.text("stdout") == "a\ufffdb"


def test_host_secrets_are_scrubbed_from_the_environment(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sekrit")
    monkeypatch.setenv("MY_TOKEN", "x")
    monkeypatch.setenv("my_lower_password", "hunter2")
    monkeypatch.setenv("KITE_OUTER_SECRET", "y")
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    rec = Recorder()
    res = run(make_ctx(ws, rec=rec), {"argv": ["env"]})
    out = rec.text("stdout")
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    assert res["exit_code"] == 0
    assert "sekrit" not in out and "hunter2" not in out
    assert not {"OPENAI_API_KEY", "MY_TOKEN", "my_lower_password", "KITE_OUTER_SECRET"} & names
    assert {"PATH", "HARMLESS_SETTING", "KITE"} <= names


def test_client_env_passes_through(ws: Path) -> None:
    rec = Recorder()
    env = {"FOO_BAR": "baz qux", "LANG": "C.UTF-8"}
    res = run(make_ctx(ws, rec=rec), {"command": 'printf "%s|%s" "$FOO_BAR" "$LANG"', "env": env})
    assert res["exit_code"] == 0 and rec.text("stdout") == "baz qux|C.UTF-8"


@pytest.mark.parametrize(
    "name", ["GITHUB_TOKEN", "my_token", "OPENAI_BASE_URL", "SSH_AUTH_SOCK", "KITE_EXEC_ID"]
)
def test_client_env_cannot_reintroduce_denied_names(ws: Path, name: str) -> None:
    rec = Recorder()
    with pytest.raises(RpcError) as ei:
        run(make_ctx(ws, rec=rec), {"argv": ["true"], "env": {name: "x"}})
    assert ei.value.code == EACCES and name in ei.value.message
    assert rec.events == []


def test_exec_disabled_by_policy(ws: Path) -> None:
    ctx = make_ctx(ws, fast_policy(exec_enabled=False))
    with pytest.raises(RpcError) as ei:
        run(ctx, {"argv": ["touch", str(ws / "ran")]})
    assert ei.value.code == EACCES and "disabled" in ei.value.message
    assert not (ws / "ran").exists()


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"argv": ["true"], "command": "true"},
        {"argv": []},
        {"argv": "true"},
        {"argv": ["true", 1]},
        {"argv": [""]},
        {"argv": ["echo", "a\0b"]},
        {"command": ""},
        {"command": "   "},
        {"command": ["true"]},
        {"command": "true", "timeout_s": 0},
        {"command": "true", "timeout_s": -1},
        {"command": "true", "timeout_s": "5"},
        {"command": "true", "timeout_s": True},
        {"command": "true", "timeout_s": float("nan")},
        {"command": "true", "env": ["A=1"]},
        {"command": "true", "env": {"1A": "x"}},
        {"command": "true", "env": {"A-B": "x"}},
        {"command": "true", "env": {"A": 1}},
        {"command": "true", "env": {"A": "x\0y"}},
        {"command": "true", "stdin": 5},
        {"command": "true", "cwd": 5},
        {"command": "true", "timeout": 5},
    ],
)
def test_bad_arguments(ws: Path, args: dict[str, Any]) -> None:
    with pytest.raises(RpcError) as ei:
        run(make_ctx(ws), args)
    assert ei.value.code == EINVAL


def test_unknown_program_is_enoent(ws: Path) -> None:
    with pytest.raises(RpcError) as ei:
        run(make_ctx(ws), {"argv": ["kite-no-such-program-xyz"]})
    assert ei.value.code == ENOENT


def test_timeout_is_capped_by_policy(ws: Path) -> None:
    res = run(
        make_ctx(ws, fast_policy(exec_timeout_max_s=0.3)), {"command": "sleep 5", "timeout_s": 99}
    )
    assert res["timeout_s"] == 0.3 and res["timed_out"] is True
    assert res["duration_ms"] < 2000


def test_default_timeout_comes_from_policy(ws: Path) -> None:
    res = run(make_ctx(ws, fast_policy(exec_timeout_default_s=0.3)), {"command": "sleep 5"})
    assert res["timeout_s"] == 0.3 and res["timed_out"] is True


def test_stdin_is_passed_then_closed(ws: Path) -> None:
    rec = Recorder()
    res = run(make_ctx(ws, rec=rec), {"argv": ["cat"], "stdin": "hello\nwörld"})
    assert res["exit_code"] == 0 and rec.text("stdout") == "hello\nwörld"


def test_default_stdin_is_dev_null(ws: Path) -> None:
    rec = Recorder()
    res = run(make_ctx(ws, rec=rec), {"argv": ["cat"], "timeout_s": 5})
    assert res["exit_code"] == 0 and not res["timed_out"] and rec.text("stdout") == ""


def test_stdin_unread_by_the_command_is_harmless(ws: Path) -> None:
    res = run(make_ctx(ws), {"argv": ["true"], "stdin": "x" * 1_000_000})
    assert res["exit_code"] == 0 and not res["timed_out"]


def test_send_signal_never_hits_a_recycled_pid() -> None:
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        st = proctree._stat(proc.pid)
        assert st is not None
        stale = proctree.ProcRef(proc.pid, st.start - 1)
        assert proctree.send_signal(stale, signal.SIGKILL) is False
        assert proc.poll() is None
        assert proctree.send_signal(proctree.ProcRef(proc.pid, st.start), signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_client_gone_mid_stream_still_ends_the_tree(ws: Path) -> None:
    class Gone(Exception):
        pass

    rec = Recorder()

    async def emit(name: str, data: Any) -> None:
        await rec.emit(name, data)
        raise Gone

    ctx = make_ctx(ws, rec=rec)
    ctx.emit = emit
    with pytest.raises(Gone):
        run(ctx, {"command": "trap '' TERM; echo $$; sleep 1000"})
    (pid,) = pids_in(rec.text("stdout"))
    assert gone(pid) and not exec_ops._RUNNING


def test_slow_client_gets_all_output(ws: Path) -> None:
    rec = Recorder()

    async def slow_emit(name: str, data: Any) -> None:
        await asyncio.sleep(0.3)
        await rec.emit(name, data)

    ctx = make_ctx(ws, rec=rec)
    ctx.emit = slow_emit
    res = run(ctx, {"command": "echo one; echo two >&2; sleep 0.05; echo three"})
    assert rec.text("stdout") == "one\nthree\n" and rec.text("stderr") == "two\n"
    assert res["exit_code"] == 0 and res["leftovers_killed"] == 0 and not res["timed_out"]


_SUBREAPER_SCRIPT = r"""
import asyncio, json, os, subprocess, sys, time
from pathlib import Path
from tests.test_exec import Recorder, make_ctx, pids_in
from bridge.ops.exec import enable_subreaper, exec_run

def strict_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False

def ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

async def run(cmd, **kw):
    rec = Recorder()
    res = await exec_run(make_ctx(Path(sys.argv[1]), rec=rec), {"command": cmd, **kw})
    return res, pids_in(rec.text("stdout"))

async def main():
    out = {"subreaper": enable_subreaper()}
    # A child of the bridge that is none of Kite's business: its status must stay ours.
    other = subprocess.Popen(["sh", "-c", "exit 7"], start_new_session=True)
    cmd = "trap '' TERM; sleep 1000 & echo $!; setsid sleep 1000 & echo $!; echo $$; sleep 1000"
    res, pids = await run(cmd, timeout_s=0.5)
    out["timeout"] = [res["timed_out"], len(pids), [strict_gone(p) for p in pids]]
    res, pids = await run("sleep 1000 & echo $!")
    out["leftover"] = [res["leftovers_killed"], [strict_gone(p) for p in pids]]
    res, (daemon,) = await run("setsid sh -c 'sleep 0.3 >/dev/null 2>&1 </dev/null & echo $!'")
    out["daemon"] = [not strict_gone(daemon), ppid(daemon) == os.getpid()]
    await asyncio.sleep(0.6)
    await run("true")
    out["daemon"].append(strict_gone(daemon))
    out["other"] = other.wait(5)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_subreaper_reaps_what_it_kills_and_nothing_else(ws: Path) -> None:
    # In its own process: being a subreaper changes where every orphan of pytest goes.
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", _SUBREAPER_SCRIPT, str(ws)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["subreaper"] is True
    # Strictly gone (not zombies), even where PID 1 does not reap.
    assert out["timeout"] == [True, 3, [True, True, True]]
    assert out["leftover"] == [1, [True]]
    # A daemon is left running, adopted by the bridge, and reaped after it dies.
    assert out["daemon"] == [True, True, True]
    assert out["other"] == 7  # never reaped behind its owner's back
