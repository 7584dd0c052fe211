"""`python -m tests.fuzz`: run the atheris fuzz targets (see tests/fuzz/__init__.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NAMES = ("frames", "envelope", "chunks", "handshake_server", "handshake_mitm", "transport", "every")

# Runs in a fresh interpreter per target: atheris instruments modules as they are imported, and
# libFuzzer exits the process when it is done.
_CHILD = r"""
import sys
import atheris
with atheris.instrument_imports(include=["agent_core"]):
    from tests.fuzz import targets
target = targets.TARGETS[sys.argv[1]]
atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
atheris.Fuzz()
"""


def fuzz(
    name: str,
    *,
    seconds: float | None = None,
    runs: int | None = None,
    seed: int = 1,
    max_len: int = 4096,
    crash_dir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Fuzz one target in a child process; returns it (returncode 0: nothing found)."""
    from tests.fuzz.targets import seeds

    crash_dir = crash_dir or HERE / "crashes"
    crash_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"kite-fuzz-{name}-") as corpus:
        for i, data in enumerate(seeds(name)):
            Path(corpus, f"seed{i}").write_bytes(data)
        regress = HERE / "regressions" / name
        if regress.is_dir():
            for f in regress.iterdir():
                Path(corpus, f"regression-{f.name}").write_bytes(f.read_bytes())
        args = [
            corpus,
            f"-seed={seed}",
            f"-max_len={max_len}",
            f"-artifact_prefix={crash_dir}/{name}-",
            "-print_final_stats=1",
            f"-dict={HERE / 'json.dict'}",
        ]
        if seconds is not None:
            args.append(f"-max_total_time={max(1, int(seconds))}")
        if runs is not None:
            args.append(f"-runs={runs}")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-c", _CHILD, name, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=(seconds or 600) + 120,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--target", action="append", choices=NAMES, help="repeatable; default: all")
    p.add_argument("--seconds", type=float, default=60, help="per target (default 60)")
    p.add_argument("--runs", type=int, default=None, help="stop after N inputs instead")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)
    if a.list:
        print("\n".join(NAMES))
        return 0
    failed = []
    for name in a.target or NAMES:
        t0 = time.monotonic()
        res = fuzz(name, seconds=None if a.runs else a.seconds, runs=a.runs, seed=a.seed)
        stats = [ln for ln in res.stderr.splitlines() if ln.startswith("stat::number_of_executed")]
        runs = stats[-1].split(":")[-1].strip() if stats else "?"
        verdict = "ok" if res.returncode == 0 else f"CRASH (exit {res.returncode})"
        print(f"{name:<18} {runs:>9} inputs in {time.monotonic() - t0:6.1f} s  {verdict}")
        if res.returncode != 0:
            failed.append(name)
            print("\n".join(res.stderr.splitlines()[-40:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
