"""Smoke test for `python -m bench`: the Kite and echo benchmarks run end to end and report
positive figures. No timing assertions: the machine running the tests may be busy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_quick_bridge_and_echo(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "bridge,echo",
            "--json",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["failed"] == {} and doc["skipped"] == {}

    metrics = {(r["system"], r["metric"]): r for r in doc["rows"]}
    expected = {
        ("kite", "fs_read_rtt"),
        ("kite", "exec_rtt"),
        ("kite", "read_bulk"),
        ("echo", "ws_rtt"),
        ("echo", "ws_bulk"),
    }
    assert expected <= set(metrics)
    for key in expected:
        row = metrics[key]
        assert row["value"] > 0, key
        assert all(v > 0 for v in row["stats"].values()), (key, row["stats"])

    fs_read = next(c for c in doc["comparisons"] if c["label"] == "fs.read 4 KiB RTT p50")
    assert fs_read["ratio"] is not None and fs_read["ratio"] > 0
    assert doc["machine"]["python"] and doc["machine"]["nproc"] >= 1
