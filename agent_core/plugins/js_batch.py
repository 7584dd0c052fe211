"""Run plugin calls on the JavaScript engine, inside Pyodide: the far side of `js_runner.py`.

    node tests/pyodide/run.mjs --python agent_core/plugins/js_batch.py REQUEST RESPONSE

REQUEST is a JSON file: {"plugins": [{"manifest": {...}, "wasm": "<base64>",
"calls": [["function", "<base64 input>"], ...]}], "no_eval": false, "limits": {HostLimits field:
value}}; RESPONSE receives
{"results": [[outcome, ...], ...]} with one outcome per call: {"ok": true, "output": "<base64>"}
or {"ok": false, "kind": ..., "message": ...}. Each plugin gets one instance for all its calls,
as on the other engines. `no_eval` runs the engine as under the web app's Content-Security-Policy,
where no JavaScript can be evaluated.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any


def run(request: dict[str, Any]) -> dict[str, Any]:
    from agent_core.plugins.engine import default_engine
    from agent_core.plugins.manifest import Manifest, TrustPolicy, validate
    from agent_core.plugins.plugin import Plugin, PluginHost
    from agent_core.plugins.sandbox import HostLimits, PluginError

    engine = default_engine()
    if request.get("no_eval"):  # as in the web app, whose CSP refuses 'unsafe-eval'
        engine._exchange = None  # type: ignore[attr-defined]
    results = []
    timings = []
    for spec in request["plugins"]:
        manifest = Manifest(validate(spec["manifest"]))
        wasm = base64.b64decode(spec["wasm"])
        host = PluginHost(
            trust=TrustPolicy(trusted_unsigned=frozenset({manifest.name})),
            limits=HostLimits(**request.get("limits", {})),
            engine=engine,
        )
        outcomes: list[dict[str, Any]] = []
        plugin = None
        try:
            plugin = Plugin(manifest, wasm, host)
        except PluginError as exc:
            load_error = {"ok": False, "kind": exc.kind, "message": str(exc)}
            results.append([load_error for _ in spec["calls"]])
            continue
        for function, data in spec["calls"]:
            t = time.perf_counter()
            try:
                out = plugin.call(function, base64.b64decode(data))
                outcomes.append({"ok": True, "output": base64.b64encode(out).decode()})
            except PluginError as exc:
                outcomes.append({"ok": False, "kind": exc.kind, "message": str(exc)})
            timings.append(time.perf_counter() - t)
        plugin.close()
        results.append(outcomes)
    return {"engine": engine.name, "results": results, "seconds": sum(timings)}


def bench(request: dict[str, Any]) -> dict[str, Any]:
    """Per-call overhead and cached-module instantiation on this engine (bench/plugins.py):
    request {"bench": {"manifest", "wasm", "calls", "rounds", "instantiations"}} -> best round's
    mean in µs for a no-op call, a 1 KiB echo, and a new instance + its first call."""
    from agent_core.plugins.abi import PluginInstance, PreparedModule
    from agent_core.plugins.engine import default_engine
    from agent_core.plugins.manifest import Manifest, validate
    from agent_core.plugins.sandbox import HostLimits, Limits

    spec = request["bench"]
    Manifest(validate(spec["manifest"]))
    wasm = base64.b64decode(spec["wasm"])
    calls, rounds, insts = spec["calls"], spec["rounds"], spec["instantiations"]
    engine = default_engine()
    prepared = PreparedModule(engine, wasm, Limits.effective(HostLimits()))
    inst = PluginInstance(prepared, name="echo")
    kib = bytes(range(256)) * 4
    assert inst.call("echo", kib) == kib and inst.call("noop", b"") == b""

    def per_call(fn: Any, n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e6

    def instantiate() -> None:
        i = PluginInstance(prepared, name="echo")
        i.call("noop")
        i.close()

    best: dict[str, float] = {}
    for _ in range(rounds):
        for key, fn, n in (
            ("noop_us", lambda: inst.call("noop", b""), calls),
            ("echo_1k_us", lambda: inst.call("echo", kib), calls),
            ("instantiate_us", instantiate, insts),
        ):
            us = per_call(fn, n)
            best[key] = min(best.get(key, us), us)
    return {"engine": engine.name, "bench": best}


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        request = json.load(f)
    response = bench(request) if "bench" in request else run(request)
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(response, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
