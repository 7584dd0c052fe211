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


@pytest.mark.slow
def test_bench_one_table_with_suites_and_chart(tmp_path: Path) -> None:
    """The bridge rows and a child-process suite land in one figures table, JSON and PNG."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only=bridge,echo,plugins", f"--output={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    groups = {f["group"] for f in doc["figures"]}
    assert groups == {"bridge", "plugins"}, doc["figures"]
    for fig in doc["figures"]:
        assert fig["kite"] > 0 and fig["baseline"] > 0, fig
        assert fig["ratio"] == pytest.approx(fig["kite"] / fig["baseline"], rel=1e-2)
    read = next(f for f in doc["figures"] if f["label"] == "fs.read 4 KiB RTT p50")
    assert read["target"] == 1.5 and read["met"] is (read["ratio"] <= 1.5)
    # The printed table carries the same lines, and the chart is a real PNG.
    assert "per-call overhead, no-op call" in proc.stdout
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_unknown_names() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "bridge,nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert "nonsense" in proc.stderr and "plugins" in proc.stderr


def test_suite_rows_normalised_and_readme_block_replaced(tmp_path: Path) -> None:
    from bench.report import update_readme
    from bench.suites import normalise

    row = {"metric": "x", "unit": "µs", "kite": 5, "baseline": 10, "target": 1.0}
    a = normalise("plugins", row)
    assert (a.label, a.kite, a.baseline, a.better, a.met) == ("x", 5.0, 10.0, "lower", True)
    b = normalise("load", {"name": "tput", "value": 50, "unit": "MiB/s", "baseline": 100})
    assert b.better == "higher" and b.ratio == 0.5 and b.met is None
    c = normalise("boot", {"name": "warm", "value": 3, "baseline": 2, "target": "≤ 1.15×"})
    assert c.target == 1.15 and c.met is False

    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- bench-table -->\nold\n<!-- /bench-table -->\nbottom\n")
    assert update_readme(readme, "new $1 \\1 table")
    assert readme.read_text() == (
        "top\n<!-- bench-table -->\nnew $1 \\1 table\n<!-- /bench-table -->\nbottom\n"
    )
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, "x") and plain.read_text() == "no markers\n"
