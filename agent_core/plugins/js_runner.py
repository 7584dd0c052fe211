"""Run plugin calls on Kite's JavaScript engine from CPython: Pyodide under Node, in a batch.

`kite plugin test` and the conformance suite use this to put the browser's engine next to
wasmtime. It needs a Kite checkout with Node, `npm ci` (Pyodide) and the test wheels, i.e. the
in-Pyodide test runner `tests/pyodide/run.mjs`; `node_runner()` returns None when those are not
there. Booting Pyodide takes seconds, so every call of a test run goes in one batch.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_core.plugins.manifest import Manifest
from agent_core.plugins.sdk import Outcome

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "pyodide" / "run.mjs"
BATCH = Path(__file__).resolve().with_name("js_batch.py")
TIMEOUT_S = 600
_HOST_PYTHON_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")


class JsBatchError(RuntimeError):
    """The Pyodide run failed (not a plugin outcome)."""


def available() -> bool:
    return (
        shutil.which("node") is not None
        and RUNNER.is_file()
        and (REPO / "node_modules" / "pyodide" / "pyodide.asm.wasm").is_file()
    )


def _run(request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to js_batch.py inside Pyodide under Node; return its response."""
    # Inside Pyodide only the repository is mounted: the files go there (build/ is ignored).
    work = REPO / "build" / "plugin-js"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        req, resp = Path(tmp) / "request.json", Path(tmp) / "response.json"
        req.write_text(json.dumps(request))
        proc = subprocess.run(
            ["node", str(RUNNER), "--python", str(BATCH.relative_to(REPO)), str(req), str(resp)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            # PYTHONPATH & co. are for this CPython; Pyodide would take them too, and a host
            # path on its sys.path hides the repository mount (python -m bench sets one).
            env={k: v for k, v in os.environ.items() if k not in _HOST_PYTHON_ENV},
            check=False,
        )
        if proc.returncode != 0 or not resp.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise JsBatchError("the Pyodide run failed:\n" + "\n".join(tail))
        return json.loads(resp.read_text())


def run_bench(
    manifest: Manifest, wasm: bytes, calls: int, rounds: int, instantiations: int
) -> dict[str, float]:
    """The echo plugin's per-call and instantiation figures on the JavaScript engine (µs)."""
    request = {
        "bench": {
            "manifest": manifest.raw,
            "wasm": base64.b64encode(wasm).decode(),
            "calls": calls,
            "rounds": rounds,
            "instantiations": instantiations,
        }
    }
    return dict(_run(request)["bench"])


def run_batch(
    plugins: Sequence[tuple[Manifest, bytes, Sequence[tuple[str, bytes]]]],
    no_eval: bool = False,
    limits: dict[str, int] | None = None,
) -> list[list[Outcome]]:
    """Outcomes of each plugin's calls on the JavaScript engine (one Pyodide boot); `no_eval`:
    without the JavaScript helpers a strict Content-Security-Policy forbids (the web app's);
    `limits`: `HostLimits` fields to change."""
    request = {
        "no_eval": no_eval,
        "limits": limits or {},
        "plugins": [
            {
                "manifest": m.raw,
                "wasm": base64.b64encode(wasm).decode(),
                "calls": [[fn, base64.b64encode(data).decode()] for fn, data in calls],
            }
            for m, wasm, calls in plugins
        ],
    }
    response = _run(request)
    out = []
    for outcomes in response["results"]:
        out.append(
            [
                Outcome(True, base64.b64decode(o["output"]))
                if o["ok"]
                else Outcome(False, kind=o["kind"], message=o["message"])
                for o in outcomes
            ]
        )
    return out


class BatchRunner:
    """A runner for `sdk.run_tests` whose calls are collected and run in one Pyodide boot."""

    def batch(
        self, manifest: Manifest, wasm: bytes, calls: Sequence[tuple[str, bytes]]
    ) -> list[Outcome]:
        return run_batch([(manifest, wasm, calls)])[0]

    def __call__(self, manifest: Manifest, wasm: bytes, function: str, data: bytes) -> Outcome:
        return self.batch(manifest, wasm, [(function, data)])[0]


def node_runner() -> BatchRunner | None:
    return BatchRunner() if available() else None
