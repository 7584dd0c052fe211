"""`kite run` as a user runs it: a real subprocess in a temporary workspace, a real bridge
(in-process for the run, the one running on the state dir, or a remote one after pairing)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.pairing import make_link
from bridge.devices import Device, Registry, device_id
from bridge.statedir import load_or_create_host_key
from tests.harness import REPO, BridgeProcess

README = "# Demo project\nTODO: write the docs\n"


def _env(state: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XDG_CONFIG_HOME": str(state.parent / "config"),  # no user agent.json leaks in
        "COLUMNS": "200",
    }
    env.pop("KITE_MODEL", None)
    return env


def start(*args: str, cwd: Path, state: Path, stdin: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--state-dir", str(state), *args],
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(state),
    )


def finish(
    p: subprocess.Popen[str], stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    stdout, stderr = p.communicate(stdin, timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def kite_run(
    *args: str, cwd: Path, state: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return finish(start(*args, cwd=cwd, state=state, stdin=stdin), stdin)


def kite_runs(
    runs: list[tuple[str, ...]], *, cwd: Path, state: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Several independent `kite run`s at once, each with a state dir of its own."""
    procs = [
        start(*args, cwd=cwd, state=state.parent / f"{state.name}-{i}")
        for i, args in enumerate(runs)
    ]
    return [finish(p) for p in procs]


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    ws = tmp_path / "project"
    (ws / "src").mkdir(parents=True)
    (ws / "README.md").write_text(README)
    (ws / "src" / "cli.py").write_text("import sys  # TODO: --verbose\n")
    return ws, tmp_path / "state"


def devices(state: Path) -> list[Device]:
    reg = Registry(state)
    try:
        return reg.list()
    finally:
        reg.close()


def pairing_link(state: Path, url: str) -> str:
    reg = Registry(state)
    try:
        secret, _ = reg.new_pairing_secret()
    finally:
        reg.close()
    host = CpythonCryptoBackend().keypair_from_private_bytes(load_or_create_host_key(state))
    return make_link(url, secret, host.public)


def last_line(text: str) -> str:
    return text.strip().split("\n")[-1]


def test_read_ls_and_natural_forms_without_a_model(project: tuple[Path, Path]) -> None:
    ws, state = project
    piped = start("-", cwd=ws, state=state.parent / "piped", stdin="")  # message from stdin
    first = start("/read README.md", cwd=ws, state=state)
    ls, search = kite_runs([("/ls",), ("search", "for", "TODO")], cwd=ws, state=state)
    r = finish(first)
    assert r.returncode == 0, r.stderr
    assert r.stdout == README  # the final answer alone on stdout
    # The CLI registered its own device key (0600) in the state dir's registry.
    assert (state / "cli_device_key").stat().st_mode & 0o777 == 0o600
    assert [d.name.split(" (")[0] for d in devices(state)] == ["kite cli"]
    assert not (state / "bridge.json").exists()  # the in-process bridge cleaned up
    assert ls.returncode == 0 and ls.stdout.splitlines() == [
        "./",
        "  src/",
        "    cli.py",
        "  README.md",
    ]
    assert search.returncode == 0  # a natural form; the words are joined
    assert "README.md:\n  Line 2: TODO: write the docs" in search.stdout
    assert "src/cli.py:\n  Line 1: import sys  # TODO: --verbose" in search.stdout
    listed = finish(piped, "list files in src\n")
    assert listed.returncode == 0 and listed.stdout.splitlines() == ["src/", "  cli.py"]


def test_run_needs_yes_and_says_so(project: tuple[Path, Path]) -> None:
    ws, state = project
    long = start("--yes", "/run echo $$ > started; exec sleep 30", cwd=ws, state=state)
    refused, allowed = kite_runs(
        [("/run touch refused.txt",), ("--yes", "/run echo hi; touch ran.txt")],
        cwd=ws,
        state=state,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (ws / "started").exists() and (ws / "started").read_text().strip():
            break
        time.sleep(0.05)
    long.send_signal(signal.SIGINT)  # Ctrl-C: the step is aborted, the command killed
    r = finish(long, timeout=10)
    assert r.returncode == 130 and last_line(r.stderr) == "kite: interrupted"
    with pytest.raises(ProcessLookupError):
        os.kill(int((ws / "started").read_text()), 0)
    assert refused.returncode == 1 and not (ws / "refused.txt").exists()
    assert "needs the user's approval" in refused.stdout
    assert last_line(refused.stderr) == (
        "kite: refused bash `touch refused.txt`: it needs approval and this run is "
        "non-interactive; rerun with --yes to allow it"
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "hi\n\n(exit code 0)\n" and (ws / "ran.txt").exists()


def test_what_the_router_cannot_do_fails_honestly(project: tuple[Path, Path]) -> None:
    ws, state = project
    unknown, bad_model = kite_runs(
        [
            ("add a --verbose flag to cli.py and run the tests",),
            ("--model", "nosuch/thing", "hi"),
        ],
        cwd=ws,
        state=state,
    )
    assert unknown.returncode == 1
    assert "without a configured model" in unknown.stdout and "--model" in unknown.stdout
    assert last_line(unknown.stderr).startswith("kite: I can't do that")
    assert bad_model.returncode == 1 and bad_model.stderr.startswith("kite: --model:")
    assert bad_model.stderr.count("\n") == 1


def test_running_bridge_on_the_state_dir_and_remote_after_pairing(
    project: tuple[Path, Path], tmp_path: Path
) -> None:
    ws, state = project
    bridge = BridgeProcess(ws, state)
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        client_state = tmp_path / "client-state"
        local = start("/read README.md", cwd=elsewhere, state=state)
        link = pairing_link(state, bridge.url)  # what `kite pair` prints
        remote = start("--bridge", link, "/read README.md", cwd=elsewhere, state=client_state)
        r = finish(local)
        assert r.returncode == 0, r.stderr
        assert r.stdout == README  # read through the running bridge's workspace
        assert "using the bridge running on this state dir" in r.stderr
        info = json.loads((state / "bridge.json").read_text())
        assert info["pid"] == bridge.proc.pid  # untouched by the run
        r = finish(remote)
        assert r.returncode == 0, r.stderr
        assert r.stdout == README
        assert (client_state / "remotes.json").stat().st_mode & 0o777 == 0o600
        # Paired once: the URL alone is enough now; an unknown URL is refused.
        again = start(
            "--bridge", bridge.url, "--yes", "/run pwd", cwd=elsewhere, state=client_state
        )
        unknown = start("--bridge", "http://127.0.0.1:9/", "/ls", cwd=elsewhere, state=client_state)
        reused = start("--bridge", link, "/ls", cwd=elsewhere, state=tmp_path / "other-client")
        r = finish(reused)  # a pairing link works once
        assert r.returncode == 1 and "refused this device" in last_line(r.stderr)
        assert not (tmp_path / "other-client" / "remotes.json").exists()
        r = finish(again)
        assert r.returncode == 0 and r.stdout.startswith(str(ws.resolve())), r.stderr
        r = finish(unknown)
        assert r.returncode == 1 and "not paired with" in last_line(r.stderr)
        # Revoking the CLI's device locks it out, with a one-line reason.
        names = [d.name.split(" (")[0] for d in devices(state)]
        assert names == ["kite cli", "kite cli"]  # the local CLI key and the paired one
        raw = base64.b64decode((state / "cli_device_key").read_bytes())
        public = CpythonCryptoBackend().keypair_from_private_bytes(raw).public
        reg = Registry(state)
        try:
            assert reg.revoke(device_id(public)) is not None
        finally:
            reg.close()
        r = kite_run("/ls", cwd=ws, state=state)
        assert r.returncode == 1 and "revoked" in last_line(r.stderr)
        assert r.stderr.count("\n") == 1
    finally:
        bridge.stop()


def test_kite_run_with_a_model_through_the_bridge_relay(tmp_path: Path) -> None:
    """`--model openai/...`: the scripted OpenAI-format server plays the model; the key and the
    base URL live in the bridge's environment only."""
    ms = pytest.importorskip("tests.model_server")
    pytest.importorskip("bridge.ops.model")  # the relay op
    from tests.test_tools import bridge_with_key

    edit = {
        "file_path": "src/cli.py",
        "old_string": "import sys  # TODO: --verbose",
        "new_string": "import sys\nVERBOSE = '--verbose' in sys.argv\nprint('verbose', VERBOSE)",
    }
    turns = [
        ms.Turn(text="Adding the flag.", tool_calls=[ms.ToolCall("edit", edit)]),
        ms.Turn(tool_calls=[ms.ToolCall("bash", {"command": "python3 src/cli.py --verbose"})]),
        ms.Turn(text="Added --verbose; `python3 src/cli.py --verbose` prints `verbose True`."),
    ]
    with ms.ScriptedModelServer(turns).in_thread() as srv:
        env = {"OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-relay-test"}
        with bridge_with_key(tmp_path, env) as bk:
            (bk.workspace / "src").mkdir()
            (bk.workspace / "src" / "cli.py").write_text("import sys  # TODO: --verbose\n")
            r = kite_run(
                "--model", "openai/gpt-test", "--yes",
                "add a --verbose flag to cli.py and run it",
                cwd=bk.workspace, state=bk.proc.state_dir,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert r.stdout == turns[2].text + "\n"
            assert "VERBOSE = '--verbose' in sys.argv" in (bk.workspace / "src/cli.py").read_text()
            last = srv.requests[-1].body
            assert any(
                m["role"] == "tool" and "verbose True" in m["content"] for m in last["messages"]
            )
            assert last["model"] == "gpt-test"
            system = str(last["messages"][0]["content"])  # what the host said about itself
            assert last["messages"][0]["role"] == "system" and "Workspace: ws" in system
            assert "sk-relay-test" not in r.stdout + r.stderr


def test_tokens_and_cost_per_session_in_run_json_stderr_and_sessions(tmp_path: Path) -> None:
    """Usage reported by the model is summed per session, priced from the config's `models`
    table, printed by `kite run --json` / on stderr, saved on the bridge, listed by `kite
    sessions`; a model without a price shows "cost unknown", never a guess."""
    ms = pytest.importorskip("tests.model_server")
    from tests.test_tools import bridge_with_key

    turns = [
        ms.Turn(
            tool_calls=[ms.ToolCall("bash", {"command": "echo hi"})],
            usage=(1000, 100),
            cached_tokens=400,
        ),
        ms.Turn(text="done", usage=(2000, 50)),
        ms.Turn(text="again", usage=(10, 5)),
    ]
    config = tmp_path / "agent.json"
    prices = {"gpt-test": {"input": 2.0, "output": 8.0, "cache_read": 0.5}}
    config.write_text(json.dumps({"models": prices}))
    with ms.ScriptedModelServer(turns).in_thread() as srv:
        env = {"OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-cost-test"}
        with bridge_with_key(tmp_path, env) as bk:
            state = bk.proc.state_dir
            r = kite_run(
                "--model", "openai/gpt-test", "--yes", "--json", "--config", str(config), "say hi",
                cwd=bk.workspace, state=state,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            assert doc["text"] == "done" and doc["reason"] == "end_turn" and doc["steps"] == 2
            # Cached prompt tokens are counted apart from the uncached ones.
            assert doc["usage"] == {
                "input_tokens": 1000 + 2000,
                "output_tokens": 150,
                "cache_read_tokens": 400,
                "cache_write_tokens": 0,
            }
            assert doc["cost_usd"] == pytest.approx((3000 * 2.0 + 150 * 8.0 + 400 * 0.5) / 1e6)

            r2 = kite_run(
                "--model", "openai/gpt-test", "--yes", "again", cwd=bk.workspace, state=state
            )  # fmt: skip
            assert r2.returncode == 0 and r2.stdout == "again\n", r2.stderr
            assert "kite: tokens: 10 in, 5 out · cost unknown" in r2.stderr

            listed = subprocess.run(
                [sys.executable, "-m", "bridge", "sessions", "--state-dir", str(state), "--json"],
                capture_output=True, text=True, env=_env(state), cwd=bk.workspace, timeout=30,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            by_id = {s["id"]: s for s in json.loads(listed.stdout)}
            assert by_id[doc["session"]]["usage"]["cost_usd"] == pytest.approx(doc["cost_usd"])
            assert by_id[doc["session"]]["usage"]["output_tokens"] == 150
            table = subprocess.run(
                [sys.executable, "-m", "bridge", "sessions", "--state-dir", str(state)],
                capture_output=True, text=True, env=_env(state), cwd=bk.workspace, timeout=30,
            )  # fmt: skip
            lines = table.stdout.strip().split("\n")
            assert len(lines) == 2, table.stdout
            assert "$?" in lines[0] and "15 tok" in lines[0]  # newest first: the unpriced run
            assert "$0.0074" in lines[1] and "3,550 tok" in lines[1]
