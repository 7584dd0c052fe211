"""The web app in a real browser (Debian Chromium via Playwright) against a real `kite serve`.

Pairing URL -> `ready`; `/read README.md` with the local provider shows the file; a reload with
the network cut and the bridge stopped boots from the service worker into `offline`; no request
leaves 127.0.0.1. Screenshots go to `.cache/e2e-screenshots/` (gitignored).

Skips with a reason when Chromium or Playwright is missing, except under ``CI=true`` where a
missing browser is a failure. Builds `dist/web` first (incremental, seconds when up to date).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.harness import REPO, BridgeProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / ".cache" / "e2e-screenshots"
BOOT_S = 120


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not (REPO / "node_modules" / "pyodide").is_dir() and not shutil.which("npm"):
        return "node_modules/pyodide is missing and npm is not available"
    return None


_reason = _missing()
if _reason and os.environ.get("CI") == "true":
    raise RuntimeError(f"browser tests cannot run under CI: {_reason}")
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def bridge(tmp_path: Path, web_dir: Path) -> Iterator[BridgeProcess]:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "README.md").write_text("# Hello from the workspace\n\nKite e2e marker 4711.\n")
    proc = BridgeProcess(ws, tmp_path / "state", "--web-dir", str(web_dir))
    yield proc
    proc.stop()


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _wait_state(page: object, states: tuple[str, ...], timeout_s: float = BOOT_S) -> str:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        last = page.evaluate("document.documentElement.dataset.kiteState")  # type: ignore[attr-defined]
        if last in states:
            return last
        if last == "error":
            detail = page.evaluate("document.getElementById('status').title")  # type: ignore[attr-defined]
            raise AssertionError(f"app went to error: {detail}")
        time.sleep(0.1)
    raise AssertionError(f"state stayed {last!r}, wanted {states}")


def test_pair_read_offline(
    bridge: BridgeProcess, browser: object, tmp_path: Path, web_dir: Path
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    origin = f"http://127.0.0.1:{bridge.port}"
    pair_url = bridge.pair_url()
    assert urlsplit(pair_url).port == bridge.port
    context = browser.new_context(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    outside: list[str] = []

    def guard(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    context.route("**/*", guard)
    page = context.new_page()
    logs: list[str] = []
    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))

    t0 = time.monotonic()
    page.goto(pair_url)
    try:
        _wait_state(page, ("ready",))
    finally:
        print("\n".join(logs[-30:]))
    boot_s = time.monotonic() - t0
    assert "pair=" not in page.url, "the pairing secret must leave the address bar"
    assert page.evaluate("history.length") >= 1

    box = page.get_by_role("textbox", name="Message")
    box.fill("/read README.md")
    page.get_by_role("button", name="Send").click()
    page.get_by_text("Kite e2e marker 4711").first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "chat-390x844.png"))
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(SHOTS / "chat-1280x800.png"))
    # An "ask" permission (bash) becomes an Approve/Reject prompt; output streams into the card.
    box.fill("/run echo kite-approved-$((40+2))")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("group", name="Approval needed").get_by_role("button", name="Approve").click()
    page.locator(".tool.ok .tool-out", has_text="kite-approved-42").wait_for(timeout=30_000)
    box.fill("/run echo should-not-run")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("group", name="Approval needed").last.get_by_role(
        "button", name="Reject"
    ).click()
    page.locator(".tool.failed").first.wait_for(timeout=30_000)
    assert page.locator(".tool-out", has_text="should-not-run\n").count() == 0
    page.screenshot(path=str(SHOTS / "approve-1280x800.png"))
    # Stop aborts a running command; the agent takes the next message.
    box.fill("/run sleep 30")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("group", name="Approval needed").last.get_by_role(
        "button", name="Approve"
    ).click()
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=15_000)
    timings = page.evaluate("window.kiteTimings")
    print(f"first boot to ready: {boot_s:.1f} s; worker timings {timings}")

    # Warm reload: connects with XX (already paired).
    t1 = time.monotonic()
    page.reload()
    _wait_state(page, ("ready",))
    warm = page.evaluate("window.kiteTimings")
    print(f"warm reload to ready: {time.monotonic() - t1:.1f} s; worker timings {warm}")

    # The bridge restarts: the live page notices (offline), then reconnects by itself (XX).
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    bridge.stop()
    _wait_state(page, ("offline",), 30)
    again = BridgeProcess(
        bridge.workspace, bridge.state_dir, "--web-dir", str(web_dir), "--port", str(bridge.port)
    )
    try:
        _wait_state(page, ("ready",), 60)
    finally:
        again.stop()

    # Offline: network cut and the bridge gone; the service worker boots the app.
    context.set_offline(True)
    page.reload()
    assert _wait_state(page, ("offline",)) == "offline"
    assert page.get_by_role("alert").is_visible()
    # The current session is readable offline, from the device's cache (IndexedDB).
    page.get_by_text("Kite e2e marker 4711").first.wait_for(timeout=30_000)
    page.locator(".tool-out", has_text="kite-approved-42").first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "offline-1280x800.png"))
    assert outside == [], f"requests left 127.0.0.1: {outside}"
    assert origin in page.url
    context.close()


def test_runtime_failure_is_an_error_not_a_hang(bridge: BridgeProcess, browser: object) -> None:
    """The wasm cannot be fetched: the page shows `error` with a reason, and stays usable."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")  # type: ignore[attr-defined]
    context.route("**/pyodide.asm.wasm", lambda route: route.abort())
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{bridge.port}/?boot_timeout_s=20")
    deadline = time.monotonic() + BOOT_S
    while page.evaluate("document.documentElement.dataset.kiteState") != "error":
        assert time.monotonic() < deadline, "no error state"
        time.sleep(0.1)
    alert = page.get_by_role("alert").filter(has_text="")
    assert any(a.is_visible() and "did not start" in a.inner_text() for a in alert.all())
    assert page.evaluate("1 + 1") == 2  # the page's thread is not stuck
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "error-dark-390x844.png"))
    context.close()
