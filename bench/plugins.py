"""Plugin host benchmark: Kite's host on wasmtime against the official Extism Python SDK.

    python -m bench.plugins [--quick] [--json]

Same plugin (tests/plugins/echo, C, built from source), same process, interleaved rounds:

- per-call overhead of a no-op call and of a 1 KiB echo (the plugin copies the input into its own
  memory and back out through a new kernel block, as PDK plugins do), 10,000 calls a round;
- instantiating a plugin from an already compiled module and making its first call (Kite: a new
  PluginInstance from a PreparedModule; Extism: a new Plugin from a CompiledPlugin, which
  instantiates lazily at its first call);
- the same three figures for Kite's host on the JavaScript engine in Pyodide under Node (the
  browser's engine; one Pyodide boot), beside the same-run Extism figures for scale.

Figures are the best round's mean (the least disturbed by the rest of the machine). `run(quick)`
returns rows for bench/__main__.py: name (= metric), value (= kite), unit, baseline,
baseline_name, ratio (value / baseline), target (≤ 1.0× for the CPython per-call rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

CALLS = 10_000
ROUNDS = 5
INSTANTIATIONS = 200


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def _best(pairs: list[tuple[Callable[[], float], Callable[[], float]]], rounds: int):
    """Interleave rounds of (kite, baseline) measurements; return the best of each."""
    kite, base = [], []
    for _ in range(rounds):
        for k, b in pairs:
            kite.append(k())
            base.append(b())
    return min(kite), min(base)


def run(quick: bool = False) -> list[dict[str, Any]]:
    import extism

    from agent_core.plugins.abi import PluginInstance, PreparedModule
    from agent_core.plugins.engine_wasmtime import WasmtimeEngine
    from agent_core.plugins.manifest import load_manifest
    from agent_core.plugins.sandbox import HostLimits, Limits
    from tests.plugins import built

    calls = 1_000 if quick else CALLS
    rounds = 2 if quick else ROUNDS
    insts = 20 if quick else INSTANTIATIONS

    manifest = load_manifest(built("echo"))
    wasm = manifest.load_wasm()
    limits = Limits.effective(HostLimits())
    prepared = PreparedModule(WasmtimeEngine.shared(), wasm, limits)
    kite = PluginInstance(prepared, name="echo")
    compiled = extism.extism.CompiledPlugin(wasm, wasi=False, functions=[])
    ext = extism.Plugin(compiled)

    kib = bytes(range(256)) * 4
    assert kite.call("echo", kib) == kib == bytes(ext.call("echo", kib))
    assert kite.call("noop", b"") == b"" == bytes(ext.call("noop", b""))

    rows = []
    for label, function, data in (("no-op call", "noop", b""), ("1 KiB echo call", "echo", kib)):
        k_us, e_us = _best(
            [
                (
                    lambda f=function, d=data: _per_call_us(lambda: kite.call(f, d), calls),
                    lambda f=function, d=data: _per_call_us(lambda: ext.call(f, d), calls),
                )
            ],
            rounds,
        )
        rows.append(_row(f"per-call overhead, {label} ({calls:,} calls)", k_us, e_us, 1.0))

    # Extism instantiates lazily, at the first call: time "ready and answered one call" for both.
    def kite_instantiate() -> float:
        def once() -> None:
            inst = PluginInstance(prepared, name="echo")
            inst.call("noop")
            inst.close()

        return _per_call_us(once, insts)

    def extism_instantiate() -> float:
        return _per_call_us(lambda: extism.Plugin(compiled).call("noop", b""), insts)

    k_us, e_us = _best([(kite_instantiate, extism_instantiate)], rounds)
    rows.append(_row("instantiate a cached module + first call", k_us, e_us, None))
    baselines = {"noop": rows[0]["baseline"], "echo": rows[1]["baseline"], "inst": e_us}
    return rows + _pyodide_rows(manifest, wasm, calls, rounds, insts, baselines)


def _pyodide_rows(
    manifest: Any, wasm: bytes, calls: int, rounds: int, insts: int, base: dict[str, float]
) -> list[dict[str, Any]]:
    """The same figures for Kite's host on the JavaScript engine in Pyodide under Node (what the
    browser runs), beside the same-run Extism figures on CPython for scale (no target: there is
    no Extism Python SDK under Pyodide to compare with)."""
    from agent_core.plugins import js_runner

    if not js_runner.available():
        print("bench.plugins: Pyodide under Node is not set up; no Pyodide rows", file=sys.stderr)
        return []
    js = js_runner.run_bench(manifest, wasm, calls, rounds, insts)
    tag = "Pyodide under Node"
    return [
        _row(f"per-call overhead, no-op call ({calls:,} calls), {tag}", js["noop_us"],
             base["noop"], None),
        _row(f"per-call overhead, 1 KiB echo call ({calls:,} calls), {tag}", js["echo_1k_us"],
             base["echo"], None),
        _row(f"instantiate a cached module + first call, {tag}", js["instantiate_us"],
             base["inst"], None),
    ]  # fmt: skip


def _row(metric: str, kite: float, baseline: float, target: float | None) -> dict[str, Any]:
    """One figure. `name`/`value` and `metric`/`kite` are the same (both spellings are read)."""
    name = (
        f"extism {metadata.version('extism')} (extism-sys {metadata.version('extism-sys')}), "
        "CPython"
    )
    return {
        "name": metric,
        "value": round(kite, 2),
        "metric": metric,
        "kite": round(kite, 2),
        "unit": "µs",
        "baseline": round(baseline, 2),
        "baseline_name": name,
        "ratio": round(kite / baseline, 3),
        "target": target,
        "better": "lower",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plugins", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 calls, 2 rounds")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'metric':72} {'kite':>10} {'extism':>10} {'ratio':>7} {'target':>7}")
    for r in rows:
        target = "" if r["target"] is None else f"≤{r['target']:g}×"
        print(
            f"{r['metric']:72} {r['kite']:>8.2f}µs {r['baseline']:>8.2f}µs "
            f"{r['ratio']:>6.2f}× {target:>7}"
        )
    print(f"baseline: {rows[0]['baseline_name']}; Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
