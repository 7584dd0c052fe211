"""The direct provider route in Pyodide: `FetchHttpClient` against the scripted model server.

The server runs here (CPython, its own thread, loopback); ``tests/pyodide/test_fetch_http.py``
runs inside Pyodide under Node (``tests/pyodide/run.mjs``) and streams from it with the JS
``fetch``, in both wire formats, with split chunks, parallel tool calls, an error status, a
stream cut mid-way and early closes. Each request's scenario is its last user message. Then we
check, from the host, what the server saw.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any

import pytest

from tests.harness import REPO
from tests.model_server import RecordedRequest, ScriptedModelServer, ToolCall, Turn
from tests.test_pyodide_suite import node_binary, parse_report

RUNNER = REPO / "tests" / "pyodide" / "run.mjs"
INSIDE = "tests/pyodide/test_fetch_http.py"
KEY = "sk-pyodide-test"
TIMEOUT_S = 300


def last_user_text(req: RecordedRequest) -> str:
    content = req.body["messages"][-1]["content"]
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return str(content)


SCENARIOS = {
    "text": Turn(text=["Hel", "lo ", "from ", "the server"], usage=(21, 5)),
    "tools": Turn(
        text="Let me look.",
        tool_calls=[ToolCall("read", {"path": "README.md"}), ToolCall("list", {"path": "src/ü"})],
        split=3,
        interleave=True,
    ),
    "unauthorized": Turn.fail(401, "bad key here", error_type="authentication_error"),
    "cut": Turn(text=["Hel", "lo", " world", " again"], cut_after=5),
    "hang": Turn(text=["Hel", "lo"], hang=True),
}


SERVER: list[ScriptedModelServer] = []


def by_scenario(req: RecordedRequest) -> Turn:
    name = last_user_text(req)
    if name == "disconnects":  # lets the Pyodide side see the server notice a closed stream
        return Turn(text=str(SERVER[0].disconnects))
    return SCENARIOS[name]


@pytest.mark.slow
def test_fetch_client_inside_pyodide() -> None:
    node = node_binary()
    with ScriptedModelServer([by_scenario] * 400).in_thread() as srv:
        SERVER[:] = [srv]
        with socket.socket() as s:  # a port that was free a moment ago: refused
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        env = dict(os.environ, KITE_MODEL_URL=srv.base_url, KITE_DEAD_PORT=str(dead_port))
        proc = subprocess.Popen(
            [node, str(RUNNER), "-rA", INSIDE],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"the Pyodide run did not finish in {TIMEOUT_S} s:\n{out[-4000:]}\n{err}")
        requests: list[RecordedRequest] = list(srv.requests)
        deadline = time.monotonic() + 10  # the server notices a closed socket on its own time
        while srv.disconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        disconnects = srv.disconnects
    report = f"exit status {proc.returncode}\n{out[-6000:]}\n--- stderr\n{err[-3000:]}"
    counts, passed, skips = parse_report(out)
    assert proc.returncode == 0, report
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, report
    assert not skips, report
    expected = [
        "test_the_runtime_seam_picks_fetch",
        "test_text_streams_in_pieces[openai]",
        "test_text_streams_in_pieces[anthropic]",
        "test_split_chunks_and_parallel_tool_calls[openai]",
        "test_split_chunks_and_parallel_tool_calls[anthropic]",
        "test_http_error_status_is_a_clear_provider_error[openai]",
        "test_http_error_status_is_a_clear_provider_error[anthropic]",
        "test_stream_cut_midway_keeps_the_partial_text[openai]",
        "test_stream_cut_midway_keeps_the_partial_text[anthropic]",
        "test_closing_the_body_early_closes_the_connection",
        "test_connection_refused_is_a_retryable_http_error",
        "test_cancelling_a_read_aborts_the_request",
    ]
    missing = [t for t in expected if f"{INSIDE}::{t}" not in passed]
    assert not missing, f"did not pass inside Pyodide: {missing}\n{report}"

    # What the server saw: both formats, each with its own credential header, from fetch.
    by_path: dict[str, list[dict[str, Any]]] = {}
    for r in requests:
        by_path.setdefault(r.path, []).append(r.headers)
    assert set(by_path) == {"/v1/chat/completions", "/v1/messages"}, by_path.keys()
    openai_auth = {h.get("authorization") for h in by_path["/v1/chat/completions"]}
    anthropic_auth = {h.get("x-api-key") for h in by_path["/v1/messages"]}
    assert f"Bearer {KEY}" in openai_auth and anthropic_auth == {KEY}, (openai_auth, anthropic_auth)
    assert disconnects >= 2, "the aborted streams' connections were not closed"
