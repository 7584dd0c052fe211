"""The one table every figure ends up in: text for the terminal, Markdown for the README, a PNG.

Every line is Kite's figure beside a baseline measured in the same run and their ratio (Kite /
baseline). The chart shows each line as a "cost factor" that reads the same way for latencies
and throughputs: how many times worse than the baseline Kite is (below 1 = better than it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README_BEGIN = "<!-- bench-table -->"
README_END = "<!-- /bench-table -->"


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    unit_s = "µs" if unit == "us" else unit
    if abs(value) >= 100:
        return f"{value:,.0f} {unit_s}".strip()
    if abs(value) >= 10:
        return f"{value:,.1f} {unit_s}".strip()
    return f"{value:,.2f} {unit_s}".strip()


def fmt_target(fig: dict[str, Any]) -> str:
    if fig["target"] is None:
        return "-"
    return ("≤ " if fig["better"] == "lower" else "≥ ") + f"{fig['target']:g}×"


def status(fig: dict[str, Any]) -> str:
    if fig["kite"] is None or (fig["baseline"] is None and fig["target"] is not None):
        return "n/a"
    return {True: "met", False: "MISSED", None: "-"}[fig["met"]]


def cost_factor(fig: dict[str, Any]) -> float | None:
    """Kite's ratio oriented so that lower is always better (throughput ratios inverted)."""
    r = fig["ratio"]
    if not r:
        return None
    return r if fig["better"] == "lower" else 1 / r


def table(header: list[str], body: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def _cells(fig: dict[str, Any]) -> list[str]:
    return [
        fig["label"],
        fmt_value(fig["kite"], fig["unit"]),
        fmt_value(fig["baseline"], fig["unit"]),
        fig["baseline_name"] or "-",
        "-" if fig["ratio"] is None else f"{fig['ratio']:.2f}×",
        fmt_target(fig),
        status(fig),
    ]


def render_text(figures: list[dict[str, Any]]) -> str:
    body = [[fig["group"], *_cells(fig)] for fig in figures]
    header = ["group", "metric", "Kite", "baseline", "baseline is", "ratio", "target", "status"]
    return table(header, body, {2, 3, 5})


def machine_line(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (
        f"{m['cpu']}, {m['nproc']} CPUs, {m['platform']}; Python {m['python']}, "
        f"websockets {m['websockets']}, cryptography {m['cryptography']}, "
        f"{m['openssh'] or 'no OpenSSH'}; load at start {m['loadavg']}"
    )


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"Measured by `./dev bench` on {doc['started_at'][:10]}: {machine_line(doc)}.",
        f"Config: {doc['config']['description']}.",
        "",
        "| | metric | Kite | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for fig in doc["figures"]:
        label, kite, base, base_name, ratio, target, st = _cells(fig)
        baseline = base if base_name == "-" else f"{base} {base_name}"
        if st == "MISSED":
            target = f"{target} — **missed**"
        elif st == "met":
            target = f"{target} — met"
        lines.append(f"| {fig['group']} | {label} | {kite} | {baseline} | {ratio} | {target} |")
    for name, why in {**doc["skipped"], **doc["failed"]}.items():
        lines.append(f"\n{name}: not measured in this run ({why}).")
    lines.append("\n![benchmark chart](bench/results.png)")
    return "\n".join(lines)


def update_readme(readme: Path, markdown: str) -> bool:
    """Replace the block between the bench-table markers; False if the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    block = f"{README_BEGIN}\n{markdown}\n{README_END}"
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return True


def write_chart(doc: dict[str, Any], path: Path) -> bool:
    """A horizontal bar per figure with a baseline: cost factor on a log axis, target marked.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figs = [f for f in doc["figures"] if cost_factor(f) is not None]
    if not figs:
        return False
    labels = [f"{f['group']}: {f['label']}" for f in figs]
    values = [cost_factor(f) for f in figs]
    colors = [{"met": "#2e7d32", "MISSED": "#c62828"}.get(status(f), "#607d8b") for f in figs]
    height = 1.2 + 0.42 * len(figs)
    fig, ax = plt.subplots(figsize=(11, height), dpi=110)
    ys = list(range(len(figs)))[::-1]
    # Bars grow from 1 (parity): left of it Kite is better than the baseline, right worse.
    ax.barh(ys, [v - 1 for v in values], left=1, color=colors, height=0.6)
    for y, f, v in zip(ys, figs, values, strict=True):
        if f["target"] is not None:
            t = f["target"] if f["better"] == "lower" else 1 / f["target"]
            ax.plot([t, t], [y - 0.38, y + 0.38], color="black", linewidth=2)
        text = f"{v:.2f}× worse" if v >= 1 else f"{1 / v:.2f}× better"
        ax.text(max(v, 1) * 1.05, y, text, va="center", fontsize=8)
    ax.axvline(1.0, color="#555", linewidth=1)
    ax.set_xscale("log")
    lo = min(min(values), 0.5) / 1.3
    hi = max(max(values), 2.0) * 2.2
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if lo <= t <= hi]
    ax.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    ax.minorticks_off()
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel(
        "Kite's cost vs the baseline from the same run (log; left of 1× = Kite better; "
        "black tick = target)",
        fontsize=9,
    )
    ax.set_title(
        f"Kite benchmarks, {doc['started_at'][:10]} — green: target met, red: missed, "
        "grey: no target",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
