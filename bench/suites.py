"""The benchmarks that live beside the bridge's: plugins, agent step, web boot, load.

Each is a module with `run(quick: bool) -> list[dict]`. They run one per subprocess so that a
crash, a Playwright event loop or a leaked thread in one cannot disturb the bridge figures or the
next suite, and so each starts from the same clean interpreter. Rows come back as JSON on the
child's last stdout line and are normalised here into `Figure`s, whatever key names the module
uses (`metric`/`kite` as in bench.plugins, or `name`/`value`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

from bench import REPO

# name → (module, what a person reads in --help). Order is the run order: cheap ones first.
SUITES: dict[str, tuple[str, str]] = {
    "plugins": ("bench.plugins", "plugin calls vs the official extism SDK"),
    "agent": ("bench.agent_step", "agent overhead per tool step, CPython and Pyodide"),
    "load": ("bench.load", "200 concurrent devices against one bridge"),
    "boot": ("tests.e2e.bench_boot", "web app boot vs bare Pyodide, in Chromium"),
}

# A suite gets this long before it is reported as failed (the boot one runs Chromium cold).
TIMEOUT_S = {"plugins": 600, "agent": 900, "load": 900, "boot": 1500}

_CHILD = (
    "import json, sys, importlib; "
    "rows = importlib.import_module(sys.argv[1]).run(quick=sys.argv[2] == '1'); "
    "print('\\n' + json.dumps(rows))"
)


@dataclass
class Figure:
    """One line of the unified table: Kite's figure beside its baseline from the same run."""

    group: str
    label: str
    unit: str
    kite: float | None
    baseline: float | None
    baseline_name: str
    better: str  # "lower" or "higher"
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.kite is None or not self.baseline:
            return None
        return self.kite / self.baseline

    @property
    def met(self) -> bool | None:
        r = self.ratio
        if r is None or self.target is None:
            return None
        return r <= self.target if self.better == "lower" else r >= self.target

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "group": self.group,
            "label": self.label,
            "unit": self.unit,
            "kite": self.kite,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "ratio": None if ratio is None else round(ratio, 3),
            "better": self.better,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _target(value: Any) -> float | None:
    """Targets arrive as 1.0, "1.0", "≤ 1.5×" or None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().lstrip("≤≥<>= ").rstrip("×x ")
    try:
        return float(text)
    except ValueError:
        return None


def normalise(group: str, row: dict[str, Any]) -> Figure:
    """Map a suite's row (any of the key spellings the suites use) onto a Figure."""
    label = str(row.get("label") or row.get("name") or row.get("metric") or "?")
    kite = _num(row.get("kite", row.get("value")))
    baseline = _num(row.get("baseline"))
    unit = str(row.get("unit") or "")
    better = row.get("better")
    if better not in ("lower", "higher"):
        better = "higher" if "/s" in unit or unit in ("ops/s",) else "lower"
    return Figure(
        group=group,
        label=label,
        unit=unit,
        kite=kite,
        baseline=baseline,
        baseline_name=str(row.get("baseline_name") or ("" if baseline is None else "baseline")),
        better=better,
        target=_target(row.get("target")),
        note=str(row.get("note") or ""),
    )


class SuiteError(Exception):
    """A suite failed; the message carries the tail of its stderr."""


class SuiteSkipped(Exception):
    """A suite's module does not exist in this checkout (not landed yet, or removed)."""


def run_suite(name: str, quick: bool) -> list[Figure]:
    """Run one suite in a child interpreter, relaying its progress to stderr; return figures."""
    module, _ = SUITES[name]
    if find_spec(module) is None:
        raise SuiteSkipped(f"{module} is not present")
    # No PYTHONPATH: `-c` with cwd=REPO already puts the repository first on sys.path, and a
    # PYTHONPATH would leak into the Pyodide runs some suites start (it replaces their mount).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, module, "1" if quick else "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: deque[str] = deque(maxlen=5)

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.strip():
                tail.append(line.rstrip())
            print(f"[bench:{name}] {line.rstrip()}", file=sys.stderr, flush=True)

    relayer = threading.Thread(target=relay, daemon=True)
    relayer.start()
    limit = TIMEOUT_S.get(name, 900)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(limit, expire)
    timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
        relayer.join(timeout=5)
    if expired.is_set():
        raise SuiteError(f"killed after its {limit} s time limit")
    if proc.returncode != 0:
        raise SuiteError(tail[-1] if tail else f"exit status {proc.returncode}")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        rows = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise SuiteError(f"no JSON rows on stdout ({exc})") from None
    if not isinstance(rows, list):
        raise SuiteError("run() did not return a list of rows")
    return [normalise(name, r) for r in rows if isinstance(r, dict)]
