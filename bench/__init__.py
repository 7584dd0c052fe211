"""Kite's benchmark suite: the bridge against a bare WebSocket echo and OpenSSH, on loopback.

Run it with `python -m bench` (or `./dev bench`). Each benchmark is an async function that takes a
`BenchContext` and returns `Row`s (one measured figure each: a latency distribution or a
throughput); `bench.__main__` runs the selected benchmarks, compares the rows it knows about
(`COMPARISONS` there) and writes `bench/results.json`. New benchmarks (issue #6) add a function
to `bench.__main__.BENCHMARKS` and, if they have a target, a `Comparison`.

This module holds what the benchmarks share: the result types, statistics, the test files,
and the handling of the server subprocesses (every one is stopped in a `finally`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

SMALL_NAME = "small.txt"
BIG_NAME = "big.bin"
SMALL_SIZE = 4096


class Skipped(Exception):
    """A benchmark cannot run on this machine (e.g. no sshd); the message says why."""


@dataclass
class Row:
    """One measured figure: `value` is the headline (median µs, or best MiB/s)."""

    system: str  # "kite", "echo", "ssh"
    metric: str  # e.g. "fs_read_rtt", "read_bulk"
    label: str  # what a person reads in the table
    unit: str  # "us" or "MiB/s"
    value: float
    stats: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "metric": self.metric,
            "label": self.label,
            "unit": self.unit,
            "value": self.value,
            "stats": self.stats,
            "note": self.note,
        }


@dataclass
class Fixture:
    """The files every system reads: a 4 KiB text file and a large random file."""

    workspace: Path
    small: Path
    small_text: str
    small_sha256: str
    big: Path
    big_size: int
    big_sha256: str


@dataclass
class BenchContext:
    """Settings, the fixture and a scratch dir, shared by the benchmarks of one run."""

    tmp: Path
    fixture: Fixture
    n_rtt: int
    warmup_rtt: int
    n_exec: int
    warmup_exec: int
    repeats: int
    profile_dir: Path | None = None
    # Facts one benchmark learns for another (e.g. the real Kite frame sizes for the echo).
    shared: dict[str, Any] = field(default_factory=dict)
    # Extra facts for results.json (negotiated ciphers, which variant won, ...).
    info: dict[str, Any] = field(default_factory=dict)
    # Directories outside `tmp` to remove at the end (e.g. on /dev/shm).
    cleanup: list[Path] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


Benchmark = Callable[[BenchContext], Awaitable[list[Row]]]


# -- statistics ----------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_stats(samples_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max in µs, and n."""
    us = sorted(s / 1000 for s in samples_ns)
    return {
        "p50": round(statistics.median(us), 1),
        "p90": round(percentile(us, 90), 1),
        "p99": round(percentile(us, 99), 1),
        "mean": round(statistics.fmean(us), 1),
        "min": round(us[0], 1),
        "max": round(us[-1], 1),
        "n": len(us),
    }


def latency_row(system: str, metric: str, label: str, samples_ns: list[int], note: str = "") -> Row:
    stats = latency_stats(samples_ns)
    return Row(system, metric, label, "us", stats["p50"], stats, note)


def throughput_row(
    system: str, metric: str, label: str, nbytes: int, seconds: list[float], note: str = ""
) -> Row:
    """MiB/s over `nbytes`, best of the runs in `seconds`."""
    runs = [nbytes / MIB / s for s in seconds]
    stats: dict[str, float] = {f"run{i + 1}": round(r, 1) for i, r in enumerate(runs)}
    stats["best"] = round(max(runs), 1)
    stats["mib"] = round(nbytes / MIB, 2)
    return Row(system, metric, label, "MiB/s", stats["best"], stats, note)


async def time_calls(fn: Callable[[], Awaitable[Any]], n: int, warmup: int) -> list[int]:
    """Await `fn` `warmup` times, then `n` times timing each call; the GC is paused meanwhile."""
    for _ in range(warmup):
        await fn()
    gc.collect()
    gc.disable()
    try:
        samples: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            await fn()
            samples.append(clock() - t0)
        return samples
    finally:
        gc.enable()


async def time_interleaved(
    fns: dict[str, Callable[[], Awaitable[Any]]], n: int, warmup: int, block: int = 100
) -> dict[str, list[int]]:
    """Like `time_calls` for several functions at once, alternating blocks of `block` calls.

    A figure and its baseline then share the machine's slow and fast moments (another
    process, frequency changes), so their ratio varies far less between runs than when one is
    measured after the other."""
    for fn in fns.values():
        for _ in range(warmup):
            await fn()
    samples: dict[str, list[int]] = {name: [] for name in fns}
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        done = 0
        while done < n:
            k = min(block, n - done)
            for name, fn in fns.items():
                out = samples[name]
                for _ in range(k):
                    t0 = clock()
                    await fn()
                    out.append(clock() - t0)
            done += k
        return samples
    finally:
        gc.enable()


# -- the files -------------------------------------------------------------------------------


def small_text() -> str:
    """4096 bytes of printable ASCII in 64-byte lines (JSON-escapes to 4096 + 64 bytes)."""
    rnd = os.urandom(SMALL_SIZE).hex()
    lines = [rnd[i : i + 63] for i in range(0, 64 * 63, 63)]
    text = "\n".join(lines) + "\n"
    assert len(text) == SMALL_SIZE
    return text


def make_fixture(root: Path, big_size: int) -> Fixture:
    """Write the workspace files; the big one is random, so nothing can compress it."""
    workspace = root / "workspace"
    workspace.mkdir(parents=True)
    text = small_text()
    small = workspace / SMALL_NAME
    small.write_text(text, encoding="ascii")
    big = workspace / BIG_NAME
    digest = hashlib.sha256()
    with big.open("wb") as fh:
        left = big_size
        while left:
            block = os.urandom(min(left, 4 * MIB))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return Fixture(
        workspace=workspace,
        small=small,
        small_text=text,
        small_sha256=hashlib.sha256(text.encode()).hexdigest(),
        big=big,
        big_size=big_size,
        big_sha256=digest.hexdigest(),
    )


# -- server subprocesses -----------------------------------------------------------------------

_RUNNING: set[subprocess.Popen[bytes]] = set()


class Service:
    """A server in a subprocess; stdout and stderr go to files in the scratch dir.

    `start` waits for the first stdout line (servers print their port or URL there), so no pipe
    can fill up and block the server.
    """

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.stdout_path = logdir / f"{name}.out"
        self.stderr_path = logdir / f"{name}.err"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for anything."""
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env, cwd=REPO
            )
        _RUNNING.add(self.proc)
        return self.proc

    def start(self, timeout: float = 20.0) -> str:
        """Start the process and return its first stdout line; raise RuntimeError if it dies."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.stdout_path.read_bytes()
            if b"\n" in data:
                return data.split(b"\n", 1)[0].decode()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        status = self.proc.poll()
        self.stop()
        why = f"exited with status {status}" if status is not None else f"not ready in {timeout}s"
        raise RuntimeError(f"{self.name} {why}: {self.stderr_tail()}")

    def first_json(self, timeout: float = 20.0) -> dict[str, Any]:
        return json.loads(self.start(timeout))

    def stderr_tail(self, lines: int = 8) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        finally:
            _RUNNING.discard(proc)


def kill_leftovers() -> None:
    """Last resort at exit: kill every server subprocess this run started and did not stop."""
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _RUNNING.discard(proc)
