"""`python -m bench`: run every benchmark, print one table, write bench/results.json and a chart.

    python -m bench                      everything: bridge, echo, ssh, plugins, agent, load, boot
    python -m bench --only bridge,echo   a subset (repeatable or comma-separated)
    python -m bench --skip boot          everything but these
    python -m bench --quick              small N and an 8 MiB file (the smoke test uses this)
    python -m bench --json               print the results document instead of the tables
    python -m bench --update-readme      also rewrite the README's table from this run
    python -m bench --profile DIR        cProfile the bridge and the client's fs.read loop

The bridge, echo and ssh benchmarks run in this process against server subprocesses; the other
suites (bench/suites.py) each run in a child interpreter. Every figure is printed beside its
baseline from the same run. A benchmark that cannot run here (no sshd, ...) is reported as
skipped; the others still run. The exit status is 1 only if a benchmark failed outright.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import (
    MIB,
    REPO,
    BenchContext,
    Benchmark,
    Row,
    Skipped,
    kill_leftovers,
    make_fixture,
    report,
)
from bench.bridge_bench import bench_bridge
from bench.echo import bench_echo
from bench.sshd import bench_ssh
from bench.suites import SUITES, Figure, SuiteError, SuiteSkipped, run_suite

# Run in this order: the echo uses the frame sizes the bridge run measured.
BENCHMARKS: dict[str, Benchmark] = {
    "bridge": bench_bridge,
    "echo": bench_echo,
    "ssh": bench_ssh,
}
SYSTEM_OF = {"bridge": "kite", "echo": "echo", "ssh": "ssh"}
BASELINE_NAMES = {"echo": "ws echo", "ssh": "OpenSSH"}


@dataclass(frozen=True)
class Comparison:
    """Kite's figure against a baseline's; `ratio` is always Kite / baseline."""

    label: str
    kite_metric: str
    baseline_system: str
    baseline_metric: str
    stat: str  # key in Row.stats ("p50", "best", ...)
    better: str  # "lower" (latency) or "higher" (throughput)
    target: float | None = None  # the ratio Kite must stay within, if any


COMPARISONS: list[Comparison] = [
    Comparison("fs.read 4 KiB RTT p50", "fs_read_rtt", "echo", "ws_rtt", "p50", "lower", 1.5),
    Comparison("fs.read 4 KiB RTT p90", "fs_read_rtt", "echo", "ws_rtt", "p90", "lower"),
    Comparison("fs.read 4 KiB RTT p99", "fs_read_rtt", "echo", "ws_rtt", "p99", "lower"),
    Comparison(
        "fs.read 4 KiB vs SFTP o+r+c p50", "fs_read_rtt", "ssh", "sftp_read_rtt", "p50", "lower"
    ),
    Comparison("exec.run true RTT p50", "exec_rtt", "ssh", "exec_rtt", "p50", "lower", 1.0),
    Comparison("exec.run true RTT p90", "exec_rtt", "ssh", "exec_rtt", "p90", "lower"),
    Comparison("exec.run true RTT p99", "exec_rtt", "ssh", "exec_rtt", "p99", "lower"),
    Comparison("bulk read throughput", "read_bulk", "ssh", "read_bulk", "best", "higher", 1.0),
    Comparison("bulk read vs WS bulk", "read_bulk", "echo", "ws_bulk", "best", "higher"),
]


# -- machine ---------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _openssh_version() -> str | None:
    ssh = shutil.which("ssh")
    if ssh is None:
        return None
    try:
        out = subprocess.run([ssh, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stderr or out.stdout).strip() or None


def machine_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "nproc": usable or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "websockets": _version("websockets"),
        "cryptography": _version("cryptography"),
        "asyncssh": _version("asyncssh"),
        "openssh": _openssh_version(),
    }


# -- running ---------------------------------------------------------------------------------


async def run_benchmarks(
    ctx: BenchContext, names: list[str]
) -> tuple[list[Row], dict[str, str], dict[str, str]]:
    """Run the selected benchmarks in order; return rows, skipped and failed (name → reason)."""
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in BENCHMARKS:
        if name not in names:
            continue
        ctx.log(f"running {name}")
        try:
            rows += await BENCHMARKS[name](ctx)
        except Skipped as exc:
            skipped[name] = str(exc)
            ctx.log(f"{name} skipped: {exc}")
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            ctx.log(f"{name} FAILED: {failed[name]}")
            traceback.print_exc(file=sys.stderr)
    return rows, skipped, failed


def compare(rows: list[Row]) -> list[dict[str, Any]]:
    """Evaluate COMPARISONS against the rows; missing figures give None."""
    by_key = {(r.system, r.metric): r for r in rows}
    out: list[dict[str, Any]] = []
    for c in COMPARISONS:
        kite = by_key.get(("kite", c.kite_metric))
        base = by_key.get((c.baseline_system, c.baseline_metric))
        kv = kite.stats.get(c.stat) if kite else None
        bv = base.stats.get(c.stat) if base else None
        ratio = kv / bv if kv is not None and bv else None
        met: bool | None = None
        if ratio is not None and c.target is not None:
            met = ratio <= c.target if c.better == "lower" else ratio >= c.target
        out.append(
            {
                "label": c.label,
                "unit": kite.unit if kite else (base.unit if base else ""),
                "kite": kv,
                "baseline": bv,
                "baseline_system": c.baseline_system,
                "baseline_label": base.label if base else None,
                "baseline_note": base.note if base else None,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "target": (
                    None
                    if c.target is None
                    else ("≤ " if c.better == "lower" else "≥ ") + f"{c.target:g}×"
                ),
                "met": met,
            }
        )
    return out


# -- printing --------------------------------------------------------------------------------


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    parts = [
        f"machine: {m['cpu']}, {m['nproc']} CPUs usable, load {m['loadavg']}, {m['platform']}",
        f"python {m['python']}, websockets {m['websockets']}, cryptography {m['cryptography']}, "
        f"asyncssh {m['asyncssh']}, {m['openssh'] or 'no OpenSSH'}",
        f"config: {doc['config']['description']}",
        "",
    ]
    body = []
    for r in doc["rows"]:
        s = r["stats"]
        if r["unit"] == "us":
            detail = f"p50 {s['p50']:.0f}  p90 {s['p90']:.0f}  p99 {s['p99']:.0f}  n={s['n']}"
        else:
            runs = [f"{v:.0f}" for k, v in s.items() if k.startswith("run")]
            detail = f"best {s['best']:.0f}  runs {'/'.join(runs)}"
        value = report.fmt_value(r["value"], r["unit"])
        body.append([r["system"], r["label"], value, detail, r["note"]])
    parts.append(report.table(["system", "measurement", "value", "detail", "note"], body, {2}))
    best = doc["info"].get("ssh_bulk_best")
    if best:
        parts.append(f"SSH throughput baseline = the fastest variant: {best}")
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------


ALL_NAMES = [*BENCHMARKS, *SUITES]


def _names(items: list[str] | None) -> list[str]:
    names = [n.strip() for item in items or [] for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_NAMES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {ALL_NAMES}")
    return names


def _selected(only: list[str] | None, skip: list[str] | None = None) -> list[str]:
    chosen = _names(only) or ALL_NAMES
    dropped = set(_names(skip))
    return [n for n in ALL_NAMES if n in chosen and n not in dropped]


def bridge_figures(comparisons: list[dict[str, Any]]) -> list[Figure]:
    """The bridge comparisons as lines of the unified table."""
    out = []
    for c in COMPARISONS:
        if c.label.endswith((" p90", " p99")):
            continue  # in results.json; the table keeps the headline figures
        got = next(x for x in comparisons if x["label"] == c.label)
        if got["kite"] is None or got["baseline"] is None:
            continue  # the baseline's benchmark was not selected, skipped or failed
        name = BASELINE_NAMES.get(c.baseline_system, c.baseline_system)
        if got["baseline_label"]:
            name = f"{name}: {got['baseline_label']}"
        out.append(
            Figure(
                group="bridge",
                label=c.label,
                unit="µs" if got["unit"] == "us" else got["unit"],
                kite=got["kite"],
                baseline=got["baseline"],
                baseline_name=name,
                better=c.better,
                target=c.target,
                note=got["baseline_note"] or "",
            )
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Every Kite benchmark beside its baseline from the same run, in one table.",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAMES",
        help=f"run only these benchmarks (comma-separated or repeated): {', '.join(ALL_NAMES)}",
    )
    parser.add_argument("--skip", action="append", metavar="NAMES", help="run all but these")
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="rewrite the table between the README's bench-table markers from this run",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small N and an 8 MiB file (smoke test)"
    )
    parser.add_argument("--json", action="store_true", help="print the results JSON on stdout")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "bench" / "results.json",
        help="where to write the results (default: bench/results.json)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="cProfile the bridge process and the client's fs.read loop into DIR",
    )
    parser.add_argument("--n", type=int, help="fs.read round trips (default 2000; quick 200)")
    parser.add_argument("--size-mib", type=int, help="bulk file size (default 64; quick 8)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = _selected(args.only, args.skip)
    core = [n for n in names if n in BENCHMARKS]
    quick = args.quick
    n_rtt = args.n or (200 if quick else 2000)
    big = (args.size_mib or (8 if quick else 64)) * MIB
    config = {
        "quick": quick,
        "n_rtt": n_rtt,
        "warmup_rtt": n_rtt // 10,
        "n_exec": 20 if quick else 200,
        "warmup_exec": 5 if quick else 20,
        "repeats": 2 if quick else 3,
        "bulk_bytes": big,
        "benchmarks": names,
    }
    config["description"] = (
        f"fs.read N={n_rtt} (+{n_rtt // 10} warm-up), exec N={config['n_exec']}, "
        f"bulk {big // MIB} MiB best of {config['repeats']}, loopback, "
        "servers in their own processes"
    )
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    machine = machine_info()  # the load average before this run adds to it
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    info: dict[str, Any] = {}
    if core:
        rows, skipped, failed, info = _run_core(args, config, core, big)
    figures = bridge_figures(compare(rows)) if core else []
    for name in names:
        if name not in SUITES:
            continue
        print(f"[bench] running {name}: {SUITES[name][1]}", file=sys.stderr, flush=True)
        try:
            figures += run_suite(name, quick)
        except SuiteSkipped as exc:
            skipped[name] = str(exc)
        except SuiteError as exc:
            failed[name] = str(exc)
            print(f"[bench] {name} FAILED: {exc}", file=sys.stderr)
    doc: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine,
        "config": config,
        "results": {
            SYSTEM_OF[n]: {r.metric: r.to_json() for r in rows if r.system == SYSTEM_OF[n]}
            for n in core
            if n not in skipped and n not in failed
        },
        "rows": [r.to_json() for r in rows],
        "comparisons": compare(rows),
        "figures": [f.to_json() for f in figures],
        "skipped": skipped,
        "failed": failed,
        "info": info,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    chart = args.output.with_suffix(".png")
    has_chart = report.write_chart(doc, chart)
    if args.update_readme and not report.update_readme(
        REPO / "README.md", report.render_markdown(doc)
    ):
        print("[bench] README.md has no bench-table markers; left alone", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        if core:
            print(render(doc))
            print()
        print(report.render_text(doc["figures"]))
        for name, why in skipped.items():
            print(f"SKIPPED {name}: {why}")
        for name, why in failed.items():
            print(f"FAILED {name}: {why}")
        print(f"\nresults: {args.output}" + (f", chart: {chart}" if has_chart else ""))
    return 1 if failed else 0


def _run_core(
    args: argparse.Namespace, config: dict[str, Any], core: list[str], big: int
) -> tuple[list[Row], dict[str, str], dict[str, str], dict[str, Any]]:
    """The bridge/echo/ssh benchmarks, sharing one fixture and scratch dir."""
    tmp = Path(tempfile.mkdtemp(prefix="kite-bench-"))
    try:
        print(f"[bench] writing the test files ({big // MIB} MiB) in {tmp}", file=sys.stderr)
        ctx = BenchContext(
            tmp=tmp,
            fixture=make_fixture(tmp, big),
            n_rtt=config["n_rtt"],
            warmup_rtt=config["warmup_rtt"],
            n_exec=config["n_exec"],
            warmup_exec=config["warmup_exec"],
            repeats=config["repeats"],
            profile_dir=args.profile.resolve() if args.profile else None,
        )
        # fs.read and its echo baseline are timed in alternating blocks when both run.
        ctx.shared["interleave_echo"] = {"bridge", "echo"} <= set(core)
        try:
            rows, skipped, failed = asyncio.run(run_benchmarks(ctx, core))
        finally:
            for extra in ctx.cleanup:
                shutil.rmtree(extra, ignore_errors=True)
    finally:
        kill_leftovers()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, skipped, failed, ctx.info


if __name__ == "__main__":
    raise SystemExit(main())
