"""Boot time of the web app vs a bare `loadPyodide()` page, in headless Chromium, cold and warm.

    .venv/bin/python -m tests.e2e.bench_boot [--runs N]

Serves dist/web from a real `kite serve` (so the same headers and compression as users get);
the bare page is a data-free HTML file written into a temp copy's root that only awaits
loadPyodide() from the same vendored files. Prints one line per measurement and the bytes the
first visit transferred.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tests.e2e.test_web import ARGS, CHROMIUM
from tests.harness import REPO, BridgeProcess

BARE_HTML = """<!doctype html><html><head><meta charset="utf-8">
<script type="module" src="bare.js"></script></head><body>bare</body></html>"""
BARE_JS = """const t0 = performance.now();
const { loadPyodide } = await import(new URL("PYDIR/pyodide.mjs", location.href).href);
await loadPyodide({
  indexURL: new URL("PYDIR/", location.href).href,
  lockFileURL: new URL("LOCKDIR/pyodide-lock.json", location.href).href,
});
window.bareMs = performance.now() - t0;
"""


def _wait(page: object, probe: str, timeout_s: float = 180) -> None:
    """Poll (wait_for_function evaluates a string, which the app's CSP rightly forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(probe):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError(probe)
        time.sleep(0.05)


def main() -> None:
    from playwright.sync_api import sync_playwright

    import build

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    runs = ap.parse_args().runs
    build.build(REPO / "dist" / "web", quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        web = Path(tmp) / "web"
        shutil.copytree(REPO / "dist" / "web", web)
        pydir = next(web.glob("pyodide/*/")).relative_to(web).as_posix()
        (web / "bare.html").write_text(BARE_HTML)
        lockdir = next(web.glob("py/*/")).relative_to(web).as_posix()
        (web / "bare.js").write_text(BARE_JS.replace("PYDIR", pydir).replace("LOCKDIR", lockdir))
        ws = Path(tmp) / "ws"
        ws.mkdir()
        bridge = BridgeProcess(ws, Path(tmp) / "state", "--web-dir", str(web))
        base = f"http://127.0.0.1:{bridge.port}/"
        results: dict[str, list[float]] = {
            k: [] for k in ("bare cold", "bare warm", "kite cold", "kite warm")
        }
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                for _ in range(runs):
                    for name, url, probe in (
                        ("bare", base + "bare.html", "window.bareMs"),
                        ("kite", bridge.pair_url(), "window.kiteTimings?.total_ms"),
                    ):
                        ctx = browser.new_context()
                        page = ctx.new_page()
                        page.on("pageerror", lambda e: print("pageerror:", e))
                        sizes: list[int] = []
                        page.on(
                            "requestfinished",
                            lambda r, s=sizes: s.append(
                                r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"]
                            ),
                        )
                        for phase in ("cold", "warm"):
                            t0 = time.monotonic()
                            page.goto(url) if phase == "cold" else page.reload()
                            _wait(page, probe)
                            ms = page.evaluate(probe)
                            results[f"{name} {phase}"].append(ms)
                            if name == "kite":
                                print(f"  worker: {page.evaluate('window.kiteTimings')}")
                            print(
                                f"{name} {phase}: {ms:.0f} ms in page, "
                                f"{time.monotonic() - t0:.1f} s wall"
                            )
                            if phase == "cold":
                                print(f"  {name} first visit transferred {sum(sizes):,} bytes")
                                url = base  # the kite reload connects with XX
                        ctx.close()
                browser.close()
        finally:
            bridge.stop()
    for k, v in results.items():
        print(f"{k}: median {statistics.median(v):.0f} ms over {len(v)}")


if __name__ == "__main__":
    main()
