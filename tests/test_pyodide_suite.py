"""One suite, two runtimes: run agent_core's tests inside Pyodide under Node, against a real bridge.

This starts a bridge (CPython), makes a pairing URL with ``kite pair --json``, and runs
``node tests/pyodide/run.mjs`` with it in ``KITE_PAIR_URL``. Inside Pyodide, pytest runs the
runtime-neutral tests (Noise on the WebCrypto backend, frames, vectors, module imports) and the
Pyodide-only ones, including tests/test_ws_browser.py, which pairs with this bridge and calls
``sys.ping``, ``fs.write``, ``fs.read`` and ``exec.run`` through agent_core's own client. Here we
parse pytest's report from inside, and check on the host what the Pyodide side did.

Needs Node >= 20, ``npm ci`` (node_modules/pyodide) and the wheels that
``tests/pyodide/fetch_wheels.py`` downloads (it is run here; a no-op once they are cached).
Without them the test is skipped locally and fails in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO, BridgeProcess, kite
from tests.test_ws_browser import DEVICE_NAME, NOTE, NOTE_PATH

RUNNER = REPO / "tests" / "pyodide" / "run.mjs"
FETCH_WHEELS = REPO / "tests" / "pyodide" / "fetch_wheels.py"
PYODIDE = REPO / "node_modules" / "pyodide" / "pyodide.asm.wasm"
TIMEOUT_S = 300
"""The whole in-Pyodide run takes well under a minute here; this only bounds a hang."""

MUST_PASS = [
    "tests/test_ws_browser.py::test_pair_then_ping_write_read_exec",
    "tests/test_ws_browser.py::test_reconnect_with_the_paired_key",
    "tests/test_ws_browser.py::test_unknown_device_is_closed_without_a_reply",
    "tests/test_ws_browser.py::test_refused_upgrade_and_dead_port_raise_transport_closed",
    "tests/test_webcrypto.py::test_x25519_matches_rfc7748",
    "tests/test_webcrypto.py::test_generated_keys_are_non_extractable",
    "tests/test_webcrypto.py::test_aes_gcm_matches_cpython_and_noise_nonce_layout",
    "tests/test_noise.py::test_handshake_delivers_payloads_and_keys[json-XX]",
    "tests/test_noise.py::test_handshake_delivers_payloads_and_keys[json-XXpsk3]",
    "tests/test_noise.py::test_tampered_transport_message_fails_without_advancing_nonce[XX]",
    "tests/test_noise.py::test_replayed_transport_message_fails",
    "tests/test_noise_properties.py::test_payloads_round_trip",
    "tests/test_noise_properties.py::test_altered_transport_message_is_refused",
    "tests/test_frames.py::test_envelope_round_trip",
    "tests/test_runtime.py::test_neutral_modules_import_here",
]
"""Tests that must have run and passed inside Pyodide, not merely have been collected."""

ALLOWED_SKIPS = ("CPython-only", "/flynn-noise-vectors.txt is not there")
"""Skip reasons that are honest inside Pyodide (CPython cross-checks; vectors not cached yet)."""

SUMMARY = re.compile(r"^=*\s*((?:\d+ [a-z]+(?:, )?)+) in [\d.]+s\b.*$", re.MULTILINE)


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this must run in CI)")
    pytest.skip(reason)


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (Node >= 20 is needed)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        unavailable(f"Node >= 20 is needed, found {version}")
    if not PYODIDE.is_file():
        unavailable(f"{PYODIDE.relative_to(REPO)} is missing: run `npm ci`")
    fetch = subprocess.run(
        [sys.executable, str(FETCH_WHEELS)], capture_output=True, text=True, timeout=300
    )
    if fetch.returncode != 0:
        unavailable(f"cannot fetch the Pyodide test wheels: {fetch.stdout}{fetch.stderr}")
    return node


def run_node(node: str, pair_url: str) -> tuple[int, str, str]:
    """Run the in-Pyodide suite; kill its whole process group if it hangs."""
    env = dict(os.environ, KITE_PAIR_URL=pair_url)
    proc = subprocess.Popen(
        [node, str(RUNNER), "-rfEsp"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # run.mjs may re-exec node with flags: one group to kill
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the Pyodide run did not finish in {TIMEOUT_S} s:\n{out[-4000:]}\n{err}")
    return proc.returncode, out, err


def parse_report(out: str) -> tuple[dict[str, int], set[str], list[str]]:
    """pytest's final counts, the ids reported PASSED (``-rp``), and the skip reasons."""
    summaries = SUMMARY.findall(out)
    assert summaries, f"no pytest summary line in the Pyodide output:\n{out[-4000:]}"
    counts = {}
    for part in summaries[-1].split(", "):
        number, word = part.split(" ", 1)
        counts[word] = int(number)
    passed = set(re.findall(r"^PASSED (\S+)$", out, re.MULTILINE))
    skips = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", out, re.MULTILINE)
    return counts, passed, skips


@pytest.mark.slow
def test_agent_core_suite_inside_pyodide(tmp_path: Path) -> None:
    node = node_binary()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    bridge = BridgeProcess(workspace, tmp_path / "state")
    try:
        code, out, err = run_node(node, bridge.pair_url())
        devices = json.loads(
            kite("devices", "list", "--json", state_dir=bridge.state_dir).stdout or "[]"
        )
    finally:
        bridge.stop()
    sys.stderr.write(err)  # run.mjs's timings: boot, install, pytest
    report = f"exit status {code}\n--- stdout (tail)\n{out[-6000:]}\n--- stderr\n{err[-3000:]}"

    counts, passed, skips = parse_report(out)
    assert code == 0, report
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, report
    assert counts.get("passed", 0) >= 80, report
    missing = [test for test in MUST_PASS if test not in passed]
    assert not missing, f"did not pass inside Pyodide: {missing}\n{report}"
    odd_skips = [s for s in skips if not any(reason in s for reason in ALLOWED_SKIPS)]
    assert not odd_skips, f"unexpected skips inside Pyodide: {odd_skips}\n{report}"

    # What the Pyodide side did, seen from the host.
    assert (workspace / NOTE_PATH).read_text("utf-8") == NOTE
    assert [d.get("name") for d in devices] == [DEVICE_NAME], devices
