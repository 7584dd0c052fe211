"""The web app's panels and acceptance checks in real Chromium against a real `kite serve`.

One bridge (with the scripted model server behind its `model.stream` relay), one browser and
one paired page are shared by the module, so the tests run in file order and each leaves the
page connected: sessions (new, resume, rename, delete, survives reload); settings (bridge route
+ model: the agent edits a file on disk, asks before bash, streams its output; permissions);
the file browser; several hosts; a revoked device; another origin; screenshots in light and dark
at 390x844 and 1280x800 (`.cache/e2e-screenshots/`, printed); and no request leaving 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_web import ARGS, BOOT_S, CHROMIUM, SHOTS, _wait_state, pytestmark  # noqa: F401
from tests.harness import Drained, kite
from tests.model_server import ScriptedModelServer, ToolCall, Turn

WAIT_MS = 60_000
RELAY_KEY = "sk-e2e-relay-key-0123456789"


def _workspace(root: Path, marker: str, name: str = "ws") -> Path:
    ws = root / name
    (ws / "notes").mkdir(parents=True)
    (ws / "README.md").write_text(f"# Workspace\n\nKite e2e marker {marker}.\n")
    (ws / "notes" / "todo.txt").write_text(f"todo list {marker}\n- first\n- second\n")
    (ws / "blob.bin").write_bytes(b"\x00\xff\xfe binary")
    return ws


@pytest.fixture(scope="module")
def bridge(
    tmp_path_factory: pytest.TempPathFactory, web_dir: Path, model: ScriptedModelServer
) -> Iterator[Drained]:
    root = tmp_path_factory.mktemp("hostA")
    env = {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": RELAY_KEY}
    origin = "http://" + urlsplit(model.base_url).netloc  # the direct route's provider
    extra = ("--web-dir", str(web_dir), "--connect-src", origin)
    proc = Drained(_workspace(root, "4711"), root / "state", *extra, env=env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class App:
    """A browser context with its page, a guard recording every non-loopback request."""

    def __init__(self, browser: Any, **ctx: Any) -> None:
        self.outside: list[str] = []
        self.context = browser.new_context(viewport={"width": 390, "height": 844}, **ctx)
        self.context.route("**/*", self._guard)
        self.page = self.context.new_page()
        self.logs: list[str] = []
        self.page.on("console", lambda m: self.logs.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.logs.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: d.accept())  # the Delete/Remove confirmations

    def _guard(self, route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def wait(self, *states: str, timeout_s: float = BOOT_S) -> str:
        try:
            return _wait_state(self.page, states, timeout_s)
        except AssertionError:
            print("\n".join(self.logs[-40:]))
            raise

    def send(self, text: str) -> None:
        self.page.get_by_role("textbox", name="Message").fill(text)
        self.page.get_by_role("button", name="Send").click()

    def idle(self) -> None:
        """The run is over (the Stop button hides at `finished`)."""
        self.page.get_by_role("button", name="Stop").wait_for(state="hidden", timeout=WAIT_MS)

    def panel(self, name: str) -> Any:
        self.page.get_by_role("button", name=name, exact=True).click()
        dlg = self.page.get_by_role("dialog", name=name)
        dlg.wait_for(timeout=WAIT_MS)
        return dlg

    def close_panel(self) -> None:
        self.page.keyboard.press("Escape")
        self.page.get_by_role("dialog").wait_for(state="hidden", timeout=WAIT_MS)

    def switch_host(self, to: str, other: str) -> None:
        """Settings → Switch to `to` (the list then offers `other`), then wait for `ready`."""
        dlg = self.panel("Settings")
        dlg.get_by_role("button", name=f"Switch to {to}").click()
        hosts = dlg.get_by_role("list", name="Paired hosts")
        hosts.get_by_role("button", name=f"Switch to {other}").wait_for(timeout=WAIT_MS)
        self.close_panel()
        self.wait("ready")

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / name))


@pytest.fixture(scope="module")
def app(browser: Any, bridge: Drained) -> Iterator[App]:
    a = App(browser)
    a.page.goto(bridge.pair_url())
    a.wait("ready")
    yield a
    a.context.close()


@pytest.fixture(autouse=True)
def _page_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """The shared page's console, printed after each test (pytest shows it on failure)."""
    yield
    if "app" in request.fixturenames:
        app = request.getfixturevalue("app")
        print("\n".join(app.logs[-60:]))


def app_port(page: Any) -> int:
    port = urlsplit(page.url).port
    assert port is not None
    return port


def _until(check: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _until_js(page: Any, expr: str, timeout_s: float = 60) -> None:
    """Poll a page expression from Python (`wait_for_function` evals, which the CSP forbids)."""
    _until(lambda: page.evaluate(expr), f"never true: {expr}", timeout_s)


def _rows(dlg: Any, list_name: str) -> Any:
    return dlg.get_by_role("list", name=list_name).get_by_role("listitem")


# -- sessions ----------------------------------------------------------------------------------


def test_sessions_new_resume_rename_delete(app: App) -> None:
    page = app.page
    app.send("/read README.md")
    page.get_by_text("Kite e2e marker 4711").first.wait_for(timeout=WAIT_MS)
    app.idle()
    title = page.locator("#session-title")
    assert title.inner_text() == "/read README.md"

    # The current session survives a reload: resumed from the bridge and drawn again.
    page.reload()
    app.wait("ready")
    page.get_by_text("Kite e2e marker 4711").first.wait_for(timeout=WAIT_MS)
    assert title.inner_text() == "/read README.md"

    dlg = app.panel("Sessions")
    dlg.get_by_role("button", name="/read README.md", exact=True).wait_for(timeout=WAIT_MS)
    assert _rows(dlg, "Saved sessions").count() == 1
    # New: an empty conversation; its first message makes it the second saved session.
    dlg.get_by_role("button", name="New session").click()
    dlg.wait_for(state="hidden", timeout=WAIT_MS)
    assert page.locator("#log > li").count() == 0
    assert title.inner_text() == "New session"
    app.send("/read notes/todo.txt")
    page.get_by_text("todo list 4711").first.wait_for(timeout=WAIT_MS)
    app.idle()

    # Resume the first one: its history comes back, the second's does not show.
    dlg = app.panel("Sessions")
    rows = _rows(dlg, "Saved sessions")
    dlg.get_by_role("button", name="/read notes/todo.txt", exact=True).wait_for(timeout=WAIT_MS)
    assert rows.count() == 2
    dlg.get_by_role("button", name="/read README.md", exact=True).click()
    dlg.wait_for(state="hidden", timeout=WAIT_MS)
    page.get_by_text("Kite e2e marker 4711").first.wait_for(timeout=WAIT_MS)
    assert page.get_by_text("todo list 4711").count() == 0

    # Rename (saved on the bridge: the list after a reload is the bridge's).
    dlg = app.panel("Sessions")
    dlg.get_by_role("button", name="Rename /read README.md").click()
    dlg.get_by_role("textbox", name="New title").fill("Readme tour")
    dlg.get_by_role("button", name="Save").click()
    dlg.get_by_role("button", name="Readme tour", exact=True).wait_for(timeout=WAIT_MS)
    assert title.inner_text() == "Readme tour"
    # An empty title is refused with a message, and changes nothing.
    dlg.get_by_role("button", name="Rename Readme tour").click()
    dlg.get_by_role("textbox", name="New title").fill("  ")
    dlg.get_by_role("button", name="Save").click()
    dlg.get_by_role("alert").filter(has_text="cannot be empty").wait_for(timeout=WAIT_MS)
    dlg.get_by_role("button", name="Cancel").click()
    dlg.get_by_role("button", name="Readme tour", exact=True).wait_for(timeout=WAIT_MS)

    # Delete the other one (the confirmation is accepted by the App's dialog handler).
    dlg.get_by_role("button", name="Delete /read notes/todo.txt").click()
    dlg.get_by_role("button", name="/read notes/todo.txt", exact=True).wait_for(
        state="detached", timeout=WAIT_MS
    )
    app.shot("sessions-390x844.png")
    app.close_panel()

    page.reload()
    app.wait("ready")
    # `ready` is the live channel; the session is resumed right after it.
    _until_js(page, "document.getElementById('session-title').textContent === 'Readme tour'", 20)
    dlg = app.panel("Sessions")
    dlg.get_by_role("button", name="Readme tour", exact=True).wait_for(timeout=WAIT_MS)
    assert _rows(dlg, "Saved sessions").count() == 1
    assert dlg.get_by_role("button", name="/read notes/todo.txt", exact=True).count() == 0
    app.close_panel()


# -- settings: the model route, the agent editing a file, asking before bash --------------------


def test_settings_bridge_model_edits_asks_and_streams(
    app: App, bridge: Drained, model: ScriptedModelServer
) -> None:
    page = app.page
    dlg = app.panel("Settings")
    dlg.get_by_role("radio", name="Through the bridge").check()
    dlg.get_by_role("textbox", name="Model").fill("gpt-test")
    dlg.get_by_role("button", name="Save settings").click()
    # A bad model name is refused with a message and nothing is saved.
    dlg.get_by_role("alert").filter(has_text="openai/<model>").wait_for(timeout=WAIT_MS)
    dlg.get_by_role("textbox", name="Model").fill("openai/gpt-test")
    dlg.get_by_role("button", name="Save settings").click()
    dlg.get_by_text("Settings saved on this device.").wait_for(timeout=WAIT_MS)
    app.close_panel()

    # Persisted on the device: a reload shows the same settings.
    page.reload()
    app.wait("ready")
    dlg = app.panel("Settings")
    dlg.get_by_role("textbox", name="Model").wait_for(timeout=WAIT_MS)
    _until_js(page, "document.getElementById('model').value !== ''")
    assert dlg.get_by_role("textbox", name="Model").input_value() == "openai/gpt-test"
    assert dlg.get_by_role("radio", name="Through the bridge").is_checked()
    app.close_panel()

    dlg = app.panel("Sessions")
    dlg.get_by_role("button", name="New session").click()
    dlg.wait_for(state="hidden", timeout=WAIT_MS)
    before = len(model.requests)
    model.script(
        [
            Turn(
                text="I'll write the note.",
                tool_calls=[
                    ToolCall(
                        "write",
                        {"file_path": "notes/agent.txt", "content": "written by kite\n"},
                        id="call_write",
                    )
                ],
            ),
            Turn(
                tool_calls=[
                    ToolCall(
                        "bash",
                        {"command": "echo first-$((6*7)); sleep 6; echo second-part"},
                        id="call_bash",
                    )
                ]
            ),
            Turn(text=["All ", "done: ", "note written."]),
        ]
    )
    app.send("write a note and run a command")
    # The edit lands on disk, with its diff in the card.
    page.locator(".tool.ok", has_text="notes/agent.txt").wait_for(timeout=WAIT_MS)
    assert (bridge.workspace / "notes" / "agent.txt").read_text() == "written by kite\n"
    assert page.locator(".tool-out.diff", has_text="+written by kite").count() == 1
    # bash asks first; approving runs it, and its output shows while it is still running.
    approval = page.get_by_role("group", name="Approval needed")
    approval.get_by_role("button", name="Approve").click()
    running = page.locator(".tool:not(.ok):not(.failed) .tool-out", has_text="first-42")
    running.wait_for(timeout=WAIT_MS)
    page.locator(".tool.ok .tool-out", has_text="second-part").wait_for(timeout=WAIT_MS)
    page.get_by_text("All done: note written.").wait_for(timeout=WAIT_MS)
    app.idle()
    # The bridge relayed with the host's key; the device never held one.
    assert len(model.requests) - before == 3
    assert model.requests[-1].headers["authorization"] == f"Bearer {RELAY_KEY}"
    assert model.requests[-1].body["model"] == "gpt-test"

    # Undo the step that wrote the file (the bridge restores from its snapshot), then redo it.
    note = bridge.workspace / "notes" / "agent.txt"
    card = page.locator(".tool", has_text="notes/agent.txt")
    card.get_by_role("button", name="Undo this step (notes/agent.txt)").click()
    page.locator(".tool.undone", has_text="notes/agent.txt").wait_for(timeout=WAIT_MS)
    _until(lambda: not note.exists(), "undo removes the file the step created")
    card.get_by_role("button", name="Redo this step (notes/agent.txt)").click()
    card.get_by_role("button", name="Undo this step (notes/agent.txt)").wait_for(timeout=WAIT_MS)
    _until(lambda: note.is_file() and note.read_text() == "written by kite\n", "redo writes it")
    assert page.locator(".tool.undone").count() == 0

    for w, h, name in ((390, 844, "chat-model"), (1280, 800, "chat-model")):
        page.set_viewport_size({"width": w, "height": h})
        app.shot(f"{name}-{w}x{h}.png")
        page.emulate_media(color_scheme="dark")
        app.shot(f"{name}-dark-{w}x{h}.png")
        page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})


def test_settings_permissions(app: App) -> None:
    page = app.page
    dlg = app.panel("Settings")
    _until_js(page, "document.querySelectorAll('#perm-rows select').length > 0")
    dlg.get_by_role("combobox", name="bash").select_option("allow")
    dlg.get_by_role("combobox", name="read").select_option("deny")
    dlg.get_by_role("button", name="Save settings").click()
    dlg.get_by_text("Settings saved on this device.").wait_for(timeout=WAIT_MS)
    app.shot("settings-390x844.png")
    app.close_panel()
    asks = page.get_by_role("group", name="Approval needed").count()
    app.send("/run echo perm-allowed-$((1+1))")
    page.locator(".tool.ok .tool-out", has_text="perm-allowed-2").wait_for(timeout=WAIT_MS)
    app.idle()
    assert page.get_by_role("group", name="Approval needed").count() == asks  # no prompt
    app.send("/read README.md")
    page.locator(".tool.failed", has_text="denied").first.wait_for(timeout=WAIT_MS)
    app.idle()

    # Back to the defaults (and the local route) for the tests that follow.
    page.reload()
    app.wait("ready")
    dlg = app.panel("Settings")
    _until_js(page, "document.querySelectorAll('#perm-rows select').length > 0")
    assert dlg.get_by_role("combobox", name="bash").input_value() == "allow"
    dlg.get_by_role("combobox", name="bash").select_option("default")
    dlg.get_by_role("combobox", name="read").select_option("default")
    dlg.get_by_role("radio", name="Local commands only").check()
    dlg.get_by_role("button", name="Save settings").click()
    dlg.get_by_text("Settings saved on this device.").wait_for(timeout=WAIT_MS)
    app.close_panel()
    app.send("/run echo asks-again")
    page.get_by_role("group", name="Approval needed").get_by_role("button", name="Reject").click()
    app.idle()


def test_settings_direct_route_key_stays_on_device(app: App, model: ScriptedModelServer) -> None:
    """The direct route's key is kept in this device's IndexedDB and never sent to the page."""
    page = app.page
    key = "sk-device-held-key-5150"
    dlg = app.panel("Settings")
    _until_js(page, "document.querySelectorAll('#perm-rows select').length > 0")
    dlg.get_by_role("radio", name="Direct from this device").check()
    dlg.get_by_role("textbox", name="Model").fill("anthropic/claude-test")
    dlg.get_by_label("API key", exact=True).fill(key)
    dlg.get_by_label("Base URL (optional)", exact=True).fill(model.base_url)
    dlg.get_by_role("button", name="Save settings").click()
    dlg.get_by_text("Settings saved on this device.").wait_for(timeout=WAIT_MS)
    assert dlg.get_by_label("API key", exact=True).input_value() == ""  # not echoed back
    dlg.get_by_text("A key is stored on this device.").wait_for(timeout=WAIT_MS)
    app.close_panel()
    page.reload()
    app.wait("ready")
    dlg = app.panel("Settings")
    dlg.get_by_text("A key is stored on this device.").wait_for(timeout=WAIT_MS)
    assert dlg.get_by_role("radio", name="Direct from this device").is_checked()
    assert dlg.get_by_label("Base URL (optional)", exact=True).input_value() == model.base_url
    assert key not in page.content()
    read_settings = """() => new Promise((ok) => {
      const r = indexedDB.open("kite");
      r.onsuccess = () => {
        const q = r.result.transaction("kv").objectStore("kv").get("settings");
        q.onsuccess = () => ok(q.result);
      };
    })"""
    assert json.loads(page.evaluate(read_settings))["api_key"] == key
    app.close_panel()

    # A real call on the direct route: the browser itself asks the provider (allowed by
    # `kite serve --connect-src`), with the device's key; the bridge relays nothing.
    model.script([Turn(text=["Direct ", "answer ", "7781."])])
    before = len(model.requests)
    app.send("hello over the direct route")
    page.get_by_text("Direct answer 7781.").wait_for(timeout=WAIT_MS)
    app.idle()
    assert len(model.requests) - before == 1
    call = model.requests[-1]
    assert call.path.endswith("/messages") and call.body["model"] == "claude-test"
    assert call.headers["x-api-key"] == key
    # Sent by the page's worker itself (Playwright's request routing answers the CORS preflight).
    assert call.headers.get("origin") == f"http://127.0.0.1:{app_port(page)}"

    # The key can be forgotten; then back to the local route.
    dlg = app.panel("Settings")
    dlg.get_by_role("button", name="Forget the stored key").click()
    dlg.get_by_text("No key stored.").wait_for(timeout=WAIT_MS)
    assert json.loads(page.evaluate(read_settings))["api_key"] == ""
    dlg.get_by_role("radio", name="Local commands only").check()
    dlg.get_by_role("button", name="Save settings").click()
    dlg.get_by_text("Settings saved on this device.").wait_for(timeout=WAIT_MS)
    app.close_panel()


# -- files -----------------------------------------------------------------------------------------


def test_file_browser_and_viewer(app: App) -> None:
    page = app.page
    dlg = app.panel("Files")
    files = dlg.get_by_role("list", name="Workspace files")
    files.get_by_role("button", name="README.md").wait_for(timeout=WAIT_MS)
    files.get_by_role("button", name="notes/").click()
    files.get_by_role("button", name="todo.txt").click()
    viewer = dlg.get_by_role("region", name="notes/todo.txt")
    viewer.wait_for(timeout=WAIT_MS)
    text = dlg.get_by_label("File contents (read-only)")
    assert "todo list 4711" in text.inner_text()
    assert text.evaluate("e => e.isContentEditable") is False
    app.shot("files-viewer-390x844.png")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.emulate_media(color_scheme="dark")
    app.shot("files-viewer-dark-1280x800.png")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    dlg.get_by_role("button", name="← Files").click()
    dlg.get_by_role("button", name="Up one folder").click()
    files.get_by_role("button", name="blob.bin").click()
    dlg.get_by_text("A binary file: not shown.").wait_for(timeout=WAIT_MS)
    app.close_panel()


# -- several hosts -----------------------------------------------------------------------------


def test_bad_pairing_link_changes_nothing(app: App, bridge: Drained) -> None:
    """A link whose secret is not outstanding: a clear error, the host list and state unchanged."""
    dlg = app.panel("Settings")
    hosts = dlg.get_by_role("list", name="Paired hosts")
    hosts.get_by_role("listitem").first.wait_for(timeout=WAIT_MS)
    link = bridge.pair_url()
    secret = link.split("pair=")[1].split("&")[0]
    bad = link.replace(secret, "A" * 43 + "=")
    dlg.get_by_role("textbox", name="Add a host").fill(bad)
    dlg.get_by_role("button", name="Pair").click()
    dlg.locator(".note").wait_for(timeout=WAIT_MS)
    assert dlg.locator(".note").inner_text()
    assert hosts.get_by_role("listitem").count() == 1
    app.close_panel()
    app.wait("ready")
    dlg = app.panel("Settings")
    dlg.get_by_role("textbox", name="Add a host").fill("http://127.0.0.1:9/#no-secret-here")
    dlg.get_by_role("button", name="Pair").click()
    dlg.locator(".note", has_text="pair").wait_for(timeout=WAIT_MS)
    assert hosts.get_by_role("listitem").count() == 1
    app.close_panel()


def test_two_hosts_paired_and_switched(browser: Any, web_dir: Path, tmp_path: Path) -> None:
    """Two real bridges with their own host keys, state and workspaces, paired from one app.

    They take turns on one loopback port: the app's Content-Security-Policy (bridge/webapp.py)
    lets a page connect only to the bridge that served it, so a second host on another origin
    needs the bridge to list it in `connect-src` (reported; not the web app's file). The app
    pins each host's key, so it never mistakes one for the other on the same address.
    """
    alpha = Drained(_workspace(tmp_path / "a", "1111", "alpha"), tmp_path / "a" / "state",
                    "--web-dir", str(web_dir))  # fmt: skip
    port = alpha.port
    beta_args = (_workspace(tmp_path / "b", "2222", "beta"), tmp_path / "b" / "state",
                 "--web-dir", str(web_dir), "--port", str(port))  # fmt: skip
    alpha_args = (alpha.workspace, alpha.state_dir, "--web-dir", str(web_dir), "--port", str(port))
    a = App(browser)
    page = a.page
    running = [alpha]
    try:
        page.goto(alpha.pair_url())
        a.wait("ready")
        a.send("/read README.md")
        page.get_by_text("Kite e2e marker 1111").first.wait_for(timeout=WAIT_MS)
        a.idle()
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")

        # beta replaces alpha on the port: alpha's pinned key does not match, so no "ready".
        running.pop().stop()
        running.append(Drained(*beta_args))
        a.wait("offline", timeout_s=60)
        # Offline, the cached session can still be read: from the list as last seen.
        page.evaluate("document.getElementById('log').replaceChildren()")
        dlg = a.panel("Sessions")
        dlg.get_by_text("Offline: the list as last seen.").wait_for(timeout=WAIT_MS)
        dlg.get_by_role("button", name="/read README.md", exact=True).click()
        page.get_by_text("Kite e2e marker 1111").first.wait_for(timeout=WAIT_MS)
        dlg.wait_for(state="hidden", timeout=WAIT_MS)
        dlg = a.panel("Settings")
        hosts = dlg.get_by_role("list", name="Paired hosts")
        hosts.get_by_role("listitem").first.wait_for(timeout=WAIT_MS)
        assert hosts.get_by_role("listitem").count() == 1
        dlg.get_by_role("textbox", name="Add a host").fill(running[0].pair_url())
        dlg.get_by_role("button", name="Pair").click()
        hosts.get_by_role("button", name="Switch to alpha").wait_for(timeout=WAIT_MS)
        assert hosts.get_by_role("listitem").count() == 2
        a.close_panel()
        a.wait("ready")
        hosts_text = page.evaluate("document.getElementById('host-list').innerText")
        assert "beta" in hosts_text and "alpha" in hosts_text, hosts_text
        assert page.get_by_text("Kite e2e marker 1111").count() == 0  # alpha's session
        a.send("/read README.md")
        page.get_by_text("Kite e2e marker 2222").first.wait_for(timeout=WAIT_MS)
        a.idle()

        # alpha is back; switching to it resumes alpha's own session and workspace.
        running.pop().stop()
        running.append(Drained(*alpha_args))
        a.switch_host("alpha", "beta")
        page.get_by_text("Kite e2e marker 1111").first.wait_for(timeout=WAIT_MS)
        assert page.get_by_text("Kite e2e marker 2222").count() == 0
        keys = page.evaluate(
            """() => new Promise((ok, fail) => {
              const r = indexedDB.open("kite");
              r.onsuccess = () => {
                const q = r.result.transaction("kv").objectStore("kv").getAllKeys();
                q.onsuccess = () => ok(q.result.map(String));
                q.onerror = () => fail(q.error);
              };
            })"""
        )
        assert len([k for k in keys if k.startswith("device")]) == 2, keys  # a key per host

        # Remove beta: it leaves the list and its device key is deleted.
        dlg = a.panel("Settings")
        dlg.get_by_role("button", name="Remove beta").click()
        hosts.get_by_role("button", name="Switch to beta").wait_for(
            state="detached", timeout=WAIT_MS
        )
        assert hosts.get_by_role("listitem").count() == 1
        a.close_panel()
        keys = page.evaluate(
            """() => new Promise((ok) => {
              const r = indexedDB.open("kite");
              r.onsuccess = () => {
                const q = r.result.transaction("kv").objectStore("kv").getAllKeys();
                q.onsuccess = () => ok(q.result.map(String));
              };
            })"""
        )
        assert len([k for k in keys if k.startswith("device")]) == 1, keys
        assert a.outside == []
    finally:
        for proc in running:
            proc.stop()
        a.context.close()


# -- acceptance: revoked device, other origin, screenshots, loopback only ----------------------


def test_revoked_device_is_refused_and_told(browser: Any, bridge: Drained) -> None:
    listed = kite("devices", "list", "--json", state_dir=bridge.state_dir).stdout
    before = {d["id"] for d in json.loads(listed)}
    phone = App(browser, color_scheme="dark")
    try:
        phone.page.goto(bridge.pair_url())
        phone.wait("ready")
        after = json.loads(kite("devices", "list", "--json", state_dir=bridge.state_dir).stdout)
        new = [d["id"] for d in after if d["id"] not in before]
        assert len(new) == 1
        kite("devices", "revoke", new[0], state_dir=bridge.state_dir)
        # The live connection is closed, and the reconnect is refused: error, with the reason.
        deadline = time.monotonic() + BOOT_S
        while phone.page.evaluate("document.documentElement.dataset.kiteState") != "error":
            assert time.monotonic() < deadline, "a revoked device must end in error"
            time.sleep(0.2)
        alert = phone.page.locator("#notice")
        assert alert.is_visible()
        assert "refused this device" in alert.inner_text()
        assert phone.page.get_by_role("button", name="Send").is_disabled()
        phone.shot("revoked-dark-390x844.png")
        # A reload does not get it back in either.
        phone.page.reload()
        deadline = time.monotonic() + BOOT_S
        while phone.page.evaluate("document.documentElement.dataset.kiteState") != "error":
            assert time.monotonic() < deadline, "a revoked device must end in error after reload"
            time.sleep(0.2)
        # What the message says to do works: pairing again with a new link.
        dlg = phone.panel("Settings")
        dlg.get_by_role("textbox", name="Add a host").fill(bridge.pair_url())
        dlg.get_by_role("button", name="Pair").click()
        _until_js(phone.page, "document.documentElement.dataset.kiteState === 'ready'")
        phone.close_panel()
        assert phone.outside == []
    finally:
        phone.context.close()


class _Evil(BaseHTTPRequestHandler):
    bridge_port = 0

    def do_GET(self) -> None:
        body = f"""<!doctype html><title>other origin</title><script>
        window.result = {{opened: false, messages: 0, closed: null, error: false}};
        const ws = new WebSocket("ws://127.0.0.1:{self.bridge_port}/kite/v1", "kite.v1");
        ws.binaryType = "arraybuffer";
        ws.onopen = () => {{ window.result.opened = true; ws.send(new Uint8Array(32)); }};
        ws.onmessage = () => {{ window.result.messages++; }};
        ws.onerror = () => {{ window.result.error = true; }};
        ws.onclose = (e) => {{ window.result.closed = e.code; }};
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_other_origin_cannot_use_the_bridge(browser: Any, bridge: Drained) -> None:
    handler = type("Evil", (_Evil,), {"bridge_port": bridge.port})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        _until_js(page, "window.result.closed !== null")
        result = page.evaluate("window.result")
        assert result["opened"] is False and result["messages"] == 0, result
        assert result["closed"] == 1006, result  # the upgrade was refused
        ctx.close()
    finally:
        server.shutdown()
        server.server_close()
    # What the browser was told, on the wire: 403 for that Origin, a 101 for the bridge's own.
    evil = f"http://127.0.0.1:{server.server_address[1]}"
    own = f"http://127.0.0.1:{bridge.port}"
    for origin, want in ((evil, b" 403 "), (own, b" 101 ")):
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as s:
            s.sendall(
                (
                    "GET /kite/v1 HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{bridge.port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: kite.v1\r\n"
                    f"Origin: {origin}\r\n\r\n"
                ).encode()
            )
            status = s.recv(4096).split(b"\r\n", 1)[0]
        assert want in status, (origin, status)


def test_screenshots_and_keyboard(app: App) -> None:
    page = app.page
    # Keyboard: the skip link comes first, then the panels' buttons in order; Enter opens a
    # panel, Escape closes it and focus returns to its button.
    page.evaluate("document.querySelector('.skip').focus()")
    seen = []
    for _ in range(3):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert seen == ["Sessions", "Files", "Settings"], seen
    page.keyboard.press("Enter")
    page.get_by_role("dialog", name="Settings").wait_for(timeout=WAIT_MS)
    page.keyboard.press("Escape")
    page.get_by_role("dialog", name="Settings").wait_for(state="hidden", timeout=WAIT_MS)
    assert page.evaluate("document.activeElement.id") == "open-settings"
    assert page.get_by_role("textbox", name="Message").is_visible()
    assert page.locator("#log").get_attribute("aria-live") == "polite"
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for w, h in ((390, 844), (1280, 800)):
            page.set_viewport_size({"width": w, "height": h})
            app.shot(f"app-{scheme}-{w}x{h}.png")
            dlg = app.panel("Sessions")
            dlg.get_by_role("list", name="Saved sessions").get_by_role("listitem").first.wait_for()
            app.shot(f"sessions-{scheme}-{w}x{h}.png")
            app.close_panel()
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    print(f"screenshots in {SHOTS}")


def test_no_request_left_loopback(app: App) -> None:
    assert app.outside == [], f"requests left 127.0.0.1: {app.outside}"
