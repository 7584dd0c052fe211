"""Wasm plugins on the device, in real Chromium, against a real `kite serve`.

The workspace has plugins installed (`.kite/plugins/`) and trusted by the host owner; the web
app (Pyodide in a Web Worker) lists them with `plugin.installed`, downloads each module with
`plugin.fetch`, checks trust and the pinned sha256 itself and runs the plugins with the browser's
`WebAssembly` (agent_core/plugins/device.py, engine_js.py). A scripted model behind the bridge's
relay calls the tools; the tests check the tool cards on the page and what the model received:

- todo_scan finds a FIXME; an untrusted plugin is not offered (and the page says why);
- an infinite loop is stopped at the plugin's time limit and the agent carries on;
- `http_request` from the browser (synchronous XHR in the worker): an allowed same-origin URL
  works, a host not on the allowlist is refused before any request, and an allowed host on
  another origin is stopped by the app's Content-Security-Policy with a clear error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent_core.plugins import sdk
from tests.e2e.test_web import ARGS, BOOT_S, CHROMIUM, SHOTS, _wait_state, pytestmark  # noqa: F401
from tests.harness import Drained
from tests.model_server import ScriptedModelServer, ToolCall, Turn
from tests.plugins import built

WAIT_MS = 60_000
RELAY_KEY = "sk-e2e-plugins-0123456789"
LOOP_TIMEOUT_MS = 1000
# Keeps every notice the worker posts (short-lived toasts on the page) in window.kiteNotices,
# and when each tool card started and finished (performance.now(), ms) in window.kiteToolTimes.
RECORD_NOTICES = """
(() => {
  const Real = self.Worker;
  self.kiteNotices = [];
  self.kiteToolTimes = {};
  self.Worker = class extends Real {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        const m = e.data || {};
        if (m.type === "notice") self.kiteNotices.push(m.text);
        const now = performance.now();
        if (m.type === "tool") self.kiteToolTimes[m.id] = { name: m.name, start: now };
        if (m.type === "tool_done" && self.kiteToolTimes[m.id])
          self.kiteToolTimes[m.id].end = now;
      });
    }
  };
})();
"""
SOURCE = "def f(x):\n    return x + 1  # FIXME: overflow on big x\n"


class Loopback:
    """A plain HTTP server on 127.0.0.1 that records the paths it was asked for."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                body = b"pong from loopback"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    srv = Loopback()
    yield srv
    srv.close()


def _install(ws: Path) -> None:
    dest = ws / ".kite" / "plugins"
    sdk.install(built("todo_scan"), dest)
    sdk.install(built("http_get"), dest)
    sdk.install(built("echo"), dest)  # installed but not trusted: must not be offered
    attacks = sdk.install(built("attacks"), dest)
    raw = json.loads((attacks / "kite-plugin.json").read_text())
    raw["timeout_ms"] = LOOP_TIMEOUT_MS
    raw["tools"] = [
        {"name": "spin", "function": "loop", "description": "Loop forever (a test attack)."}
    ]
    (attacks / "kite-plugin.json").write_text(json.dumps(raw))


@pytest.fixture(scope="module")
def bridge(
    tmp_path_factory: pytest.TempPathFactory, web_dir: Path, model: ScriptedModelServer
) -> Iterator[Drained]:
    root = tmp_path_factory.mktemp("plugins")
    ws = root / "ws"
    ws.mkdir()
    (ws / "README.md").write_text("# Plugins e2e\n")
    _install(ws)
    config = root / "config" / "kite"
    config.mkdir(parents=True)
    trusted = ["todo_scan", "http_get", "attacks"]
    (config / "plugin-trust.json").write_text(
        json.dumps({"trusted_keys": [], "trusted_unsigned": trusted})
    )
    env = {
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": RELAY_KEY,
        "XDG_CONFIG_HOME": str(root / "config"),
    }
    proc = Drained(ws, root / "state", "--web-dir", str(web_dir), env=env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def page(bridge: Drained, model: ScriptedModelServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844})
        pg = context.new_page()
        logs: list[str] = []
        pg.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
        pg.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
        pg.kite_logs = logs  # type: ignore[attr-defined]
        pg.add_init_script(RECORD_NOTICES)
        pg.goto(bridge.pair_url())
        try:
            _wait_state(pg, ("ready",), BOOT_S)
        except AssertionError:
            print("\n".join(logs[-40:]))
            raise
        # The model goes through the bridge's relay (the host's key).
        pg.get_by_role("button", name="Settings", exact=True).click()
        dlg = pg.get_by_role("dialog", name="Settings")
        dlg.get_by_role("radio", name="Through the bridge").check()
        dlg.get_by_role("textbox", name="Model").fill("openai/gpt-test")
        dlg.get_by_role("button", name="Save settings").click()
        dlg.get_by_text("Settings saved on this device.").wait_for(timeout=WAIT_MS)
        pg.keyboard.press("Escape")
        dlg.wait_for(state="hidden", timeout=WAIT_MS)
        yield pg
        context.close()
        browser.close()


@pytest.fixture(autouse=True)
def _diagnose(request: pytest.FixtureRequest) -> Iterator[None]:
    """On a failure, print what the page, the worker and the bridge said."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed or "page" not in request.fixturenames:
        return
    page = request.getfixturevalue("page")
    print("\n--- console ---\n" + "\n".join(page.kite_logs[-40:]))
    print("--- notices ---\n" + "\n".join(page.evaluate("window.kiteNotices")))
    print("--- page ---\n" + page.locator("body").inner_text()[-3000:])
    print("--- bridge ---\n" + "".join(request.getfixturevalue("bridge").log[-40:]))
    for r in request.getfixturevalue("model").requests[-3:]:
        tools = [t["function"]["name"] for t in r.body.get("tools", [])]
        print("--- model request ---", tools, json.dumps(r.body.get("messages", [])[-3:])[:2000])


def _send(page: Any, text: str) -> None:
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send").click()


def _idle(page: Any) -> None:
    page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=WAIT_MS)


def _tool_result(model: ScriptedModelServer, index: int = -1) -> str:
    """The content of the last tool message in the model request `index`."""
    msgs = model.requests[index].body["messages"]
    return [m for m in msgs if m["role"] == "tool"][-1]["content"]


def test_model_calls_a_device_plugin_and_sees_its_result(
    page: Any, model: ScriptedModelServer
) -> None:
    model.script(
        [
            Turn(tool_calls=[ToolCall("todo_scan", {"text": SOURCE})]),
            Turn(text="One FIXME: overflow on line 2."),
        ]
    )
    _send(page, "scan this for todos")
    card = page.locator(".tool.ok", has_text="todo_scan")
    card.locator(".tool-out", has_text="overflow on big x").wait_for(timeout=WAIT_MS)
    page.get_by_text("One FIXME: overflow on line 2.").wait_for(timeout=WAIT_MS)
    _idle(page)
    assert len(model.requests) == 2
    offered = {t["function"]["name"] for t in model.requests[0].body["tools"]}
    assert {"todo_scan", "http_get", "spin"} - offered == set()
    assert "echo" not in offered, "an untrusted plugin was offered to the model"
    result = _tool_result(model)
    assert "FIXME" in result and "overflow on big x" in result
    # The untrusted plugin was reported on the page, not silently dropped.
    notices = page.evaluate("window.kiteNotices")
    assert any("echo" in n and "not trusted" in n for n in notices), notices
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "plugin-todo-390x844.png"))


def test_a_looping_plugin_is_stopped_and_the_agent_carries_on(
    page: Any, model: ScriptedModelServer
) -> None:
    model.script([Turn(tool_calls=[ToolCall("spin", {})]), Turn(text="The plugin was stopped.")])
    _send(page, "spin")
    failed = page.locator(".tool.failed", has_text="spin")
    failed.wait_for(timeout=WAIT_MS)
    page.get_by_text("The plugin was stopped.").wait_for(timeout=WAIT_MS)
    _idle(page)
    assert len(model.requests) == 2
    result = _tool_result(model)
    assert f"time limit of {LOOP_TIMEOUT_MS} ms" in result, result
    assert "time limit" in failed.inner_text()
    # From the tool card's start to its end, as the page saw it (call ids repeat across scripts).
    times = [t for t in page.evaluate("window.kiteToolTimes").values() if t["name"] == "spin"]
    took = times[-1]["end"] - times[-1]["start"]
    print(f"\nlooping plugin, limit {LOOP_TIMEOUT_MS} ms: stopped, card done after {took:.0f} ms")
    assert took >= LOOP_TIMEOUT_MS
    # The worker is responsive again: another plugin call goes through.
    model.script(
        [Turn(tool_calls=[ToolCall("todo_scan", {"text": "# TODO: again\n"})]), Turn(text="ok")]
    )
    _send(page, "again")
    page.locator(".tool.ok .tool-out", has_text="again").wait_for(timeout=WAIT_MS)
    _idle(page)


def test_plugin_http_from_the_browser(
    page: Any, bridge: Drained, model: ScriptedModelServer, loopback: Loopback, web_dir: Path
) -> None:
    origin = f"http://127.0.0.1:{bridge.port}"
    model.script(
        [
            Turn(tool_calls=[ToolCall("http_get", {"url": f"{origin}/manifest.webmanifest"})]),
            Turn(tool_calls=[ToolCall("http_get", {"url": f"http://localhost:{loopback.port}/"})]),
            Turn(tool_calls=[ToolCall("http_get", {"url": f"http://127.0.0.1:{loopback.port}/x"})]),
            Turn(text="http checked"),
        ]
    )
    _send(page, "fetch things")
    page.get_by_text("http checked").wait_for(timeout=WAIT_MS)
    _idle(page)
    assert len(model.requests) == 4
    allowed = [m for m in model.requests[1].body["messages"] if m["role"] == "tool"][-1]
    assert allowed["content"].startswith("status 200\n"), allowed["content"]
    manifest = json.loads((web_dir / "manifest.webmanifest").read_text())
    assert manifest["name"] in allowed["content"]
    refused = _tool_result(model, 2)
    assert "not in the plugin's allowed_hosts" in refused, refused
    cross = _tool_result(model, 3)
    print(f"\ncross-origin allowed host from the browser: {cross}")
    # The app's CSP (connect-src: the bridge's origin) stops an allowed host on another origin
    # before it leaves the browser; the plugin gets a clear error saying so.
    assert loopback.seen == [], "a request the sandbox or the CSP should stop reached the server"
    assert "Content-Security-Policy" in cross, cross
    page.locator(".tool.ok .tool-out", has_text="status 200").first.wait_for(timeout=WAIT_MS)
    page.locator(".tool.failed", has_text="allowed_hosts").first.wait_for(timeout=WAIT_MS)
