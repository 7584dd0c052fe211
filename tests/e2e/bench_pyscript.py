"""PyScript (`@pyscript/core`, vendored from npm) vs Kite's own worker boot, same Pyodide.

    .venv/bin/python -m tests.e2e.bench_pyscript [--runs N]

The measurement behind the runtime decision in docs/architecture.md. One real `kite serve`
serves a copy of dist/web plus `pyscript/` (the package's dist/) and two pages:

- `ps.html`: `PyWorker("ps_worker.py", {type: "pyodide", version: <our vendored pyodide.mjs>,
  config: {files: {<our wheel>: "kite.whl"}}})`; the Python unpacks the wheel into
  site-packages, imports the agent modules the app needs and requests `/ps-ready?t=<its clock>`;
- the Kite app itself, up to "booted" (`#boot` hidden: Pyodide in the worker, wheel installed,
  `kite_web` imported — which imports more than ps_worker.py does, so this favours PyScript).

Cold (fresh context) and warm (reload), navigation start to ready in the page's clock, plus
the bytes of the cold visit. Needs `npm ci` (node_modules/@pyscript/core); nothing is fetched
from the internet (a request leaving 127.0.0.1 is aborted and reported).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e.bench_boot import _prepare
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.harness import REPO, BridgeProcess

PS_HTML = """<!doctype html><html><head><meta charset="utf-8">
<script type="module" src="ps.js"></script></head><body>pyscript</body></html>"""
PS_JS = """import { PyWorker } from "./pyscript/core.js";
const w = PyWorker("./ps_worker.py", {
  type: "pyodide",
  version: new URL("/PYDIR/pyodide.mjs", location.href).href,
  config: { interpreter: "/PYDIR/pyodide.mjs", files: { "/WHEEL": "./kite.whl" } },
});
"""
PS_WORKER = """import importlib, js, sys, zipfile
site = f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
zipfile.ZipFile("kite.whl").extractall(site)
importlib.invalidate_caches()
import agent_core.client, agent_core.agent.loop, agent_core.agent.local  # noqa
import agent_core.runtime, agent_core.pairing, agent_core.channel.crypto_webcrypto  # noqa
# PyScript's own channel back to the page (pyscript.sync) needs SharedArrayBuffer, i.e.
# cross-origin isolation; a request carrying the worker's absolute clock works everywhere.
js.fetch(f"{js.location.origin}/ps-ready?t={js.performance.timeOrigin + js.performance.now()}")
"""
BOOTED_PROBE = """new MutationObserver(() => {
  const b = document.getElementById("boot");
  if (b && b.hidden && window.kiteBootedMs === undefined) window.kiteBootedMs = performance.now();
}).observe(document, { attributes: true, subtree: true, attributeFilter: ["hidden"] });
"""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loosen_csp(route: Any) -> None:
    resp = route.fetch()
    headers = dict(resp.headers)
    csp = headers.get("content-security-policy", "")
    headers["content-security-policy"] = csp.replace("worker-src 'self'", "worker-src 'self' blob:")
    route.fulfill(response=resp, headers=headers)


def measure(runs: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    dist = REPO / "node_modules" / "@pyscript" / "core" / "dist"
    if not dist.is_dir():
        raise SystemExit("node_modules/@pyscript/core is missing: npm ci")
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        web = _prepare(tmp)
        shutil.copytree(dist, web / "pyscript", ignore=shutil.ignore_patterns("*.map"))
        pydir = next(web.glob("pyodide/*/")).relative_to(web).as_posix()
        wheel = next(web.glob("py/*/*.whl")).relative_to(web).as_posix()
        # polyscript loads Pyodide's lock from next to pyodide.mjs (ours lives in py/<hash>/)
        lock = next(web.glob("py/*/pyodide-lock.json"))
        shutil.copy(lock, web / pydir / "pyodide-lock.json")
        (web / "ps.html").write_text(PS_HTML)
        (web / "ps.js").write_text(PS_JS.replace("PYDIR", pydir).replace("WHEEL", wheel))
        (web / "ps_worker.py").write_text(PS_WORKER)
        ws = tmp / "ws"
        ws.mkdir()
        bridge = BridgeProcess(ws, tmp / "state", "--web-dir", str(web))
        base = f"http://127.0.0.1:{bridge.port}/"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                for rnd in range(runs):
                    order = ("pyscript", "kite") if rnd % 2 == 0 else ("kite", "pyscript")
                    for name in order:
                        ctx = browser.new_context()
                        ctx.add_init_script(BOOTED_PROBE)
                        escaped: list[str] = []

                        def guard(route: Any, escaped: list[str] = escaped) -> None:
                            url = route.request.url
                            if url.startswith(base) or url.startswith("ws://127.0.0.1"):
                                route.continue_()
                            else:
                                escaped.append(url)
                                route.abort()

                        ctx.route("**/*", guard)
                        # PyScript starts its worker from a blob: URL, which the app's CSP
                        # (worker-src 'self') refuses: loosen it for ps.html only, as shipping
                        # PyScript would have to.
                        ctx.route(base + "ps.html", loosen_csp)
                        page = ctx.new_page()
                        page.on("pageerror", lambda e: say(f"pageerror: {e}"))
                        page.on(
                            "console",
                            lambda m: m.type == "error" and say(f"console: {m.text[:200]}"),
                        )
                        page.on(
                            "worker",
                            lambda w: w.on("console", lambda m: say(f"worker: {m.text[:300]}")),
                        )
                        got: list[int] = []
                        page.on(
                            "response",
                            lambda r, got=got: got.append(int(r.headers.get("content-length", 0))),
                        )
                        ready_at: list[float] = []  # epoch ms, from the worker's clock
                        page.on(
                            "request",
                            lambda r, ready_at=ready_at: (
                                "/ps-ready?t=" in r.url
                                and ready_at.append(float(r.url.split("t=")[1]))
                            ),
                        )
                        if name == "pyscript":
                            url, probe = base + "ps.html", "window.psReadyMs"
                        else:
                            url, probe = bridge.pair_url(), "window.kiteBootedMs"
                        for phase in ("cold", "warm"):
                            if phase == "cold":
                                page.goto(url)
                            else:
                                page.reload()
                            ready_at.clear()
                            deadline = time.monotonic() + 120
                            while not page.evaluate(probe):
                                if ready_at:
                                    origin = page.evaluate("performance.timeOrigin")
                                    page.evaluate(f"window.psReadyMs = {ready_at[0] - origin}")
                                    continue
                                if time.monotonic() > deadline:
                                    raise TimeoutError(f"{name} {phase}: {probe}")
                                time.sleep(0.05)
                            ms = float(page.evaluate(probe))
                            out.setdefault(f"{name} {phase}", []).append(ms)
                            say(f"round {rnd + 1} {name} {phase}: {ms:.0f} ms")
                            if phase == "cold":
                                out.setdefault(f"{name} bytes", []).append(float(sum(got)))
                                say(f"  {name} first visit {sum(got):,} bytes")
                        if escaped:
                            say(f"  {name}: blocked requests leaving the host: {escaped}")
                        ctx.close()
                browser.close()
        finally:
            bridge.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    m = measure(ap.parse_args().runs)
    for k, v in m.items():
        each = ", ".join(f"{x:.0f}" for x in v)
        print(f"{k}: median {statistics.median(v):,.0f} over {len(v)} ({each})")


if __name__ == "__main__":
    main()
