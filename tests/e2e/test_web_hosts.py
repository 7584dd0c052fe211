"""A second host on another origin, in real Chromium against real bridges.

The app is served by bridge A; bridge B listens on another port (another origin). The page may
reach B only when A's owner lists B in the app's Content-Security-Policy (`kite serve
--connect-src`), and B accepts the page only when its owner allows A's origin (`--allow-origin`).
With both, the app pairs with B, reads B's workspace, and switches back to A. Without either,
pairing fails with an error that names the missing flag, and the app stays on A.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_web import pytestmark  # noqa: F401
from tests.e2e.test_web_panels import WAIT_MS, App, _workspace, browser  # noqa: F401
from tests.harness import Drained


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _origin(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, web_dir: Path) -> Iterator[dict[str, Drained]]:
    """alpha serves the app; beta allows it; gamma does not allow it (but the CSP lets the page
    try); delta allows it, but the CSP does not list it."""
    root = tmp_path_factory.mktemp("origins")
    ports = {name: _free_port() for name in ("alpha", "beta", "gamma", "delta")}
    a = _origin(ports["alpha"])
    extra = {
        "alpha": ("--web-dir", str(web_dir), "--connect-src", _origin(ports["beta"]),
                  "--connect-src", _origin(ports["gamma"])),
        "beta": ("--allow-origin", a),
        "gamma": (),
        "delta": ("--allow-origin", a),
    }  # fmt: skip
    markers = {"alpha": "1111", "beta": "2222", "gamma": "3333", "delta": "4444"}
    procs: dict[str, Drained] = {}
    try:
        for name, port in ports.items():
            ws = _workspace(root / name, markers[name], name)
            procs[name] = Drained(ws, root / name / "state", "--port", str(port), *extra[name])
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def _audit(bridge: Drained) -> list[dict[str, Any]]:
    path = bridge.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _add_host(app: App, link: str) -> Any:
    dlg = app.panel("Settings")
    dlg.get_by_role("textbox", name="Add a host").fill(link)
    dlg.get_by_role("button", name="Pair").click()
    return dlg


def test_second_host_on_another_origin(browser: Any, hosts: dict[str, Drained]) -> None:  # noqa: F811
    app = App(browser)
    page = app.page
    try:
        page.goto(hosts["alpha"].pair_url())
        app.wait("ready")
        app.send("/read README.md")
        page.get_by_text("Kite e2e marker 1111").first.wait_for(timeout=WAIT_MS)
        app.idle()

        # beta: listed in the CSP, and it allows this page's origin → paired and current.
        dlg = _add_host(app, hosts["beta"].pair_url())
        host_list = dlg.get_by_role("list", name="Paired hosts")
        host_list.get_by_role("button", name="Switch to alpha").wait_for(timeout=WAIT_MS)
        app.close_panel()
        app.wait("ready")
        app.send("/read README.md")
        page.get_by_text("Kite e2e marker 2222").first.wait_for(timeout=WAIT_MS)
        app.idle()
        assert page.get_by_text("Kite e2e marker 1111").count() == 0  # alpha's session is not shown
        assert hosts["beta"].port != hosts["alpha"].port

        # Back to alpha: its own session and workspace.
        app.switch_host("alpha", "beta")
        page.get_by_text("Kite e2e marker 1111").first.wait_for(timeout=WAIT_MS)
        assert page.get_by_text("Kite e2e marker 2222").count() == 0

        # gamma: the CSP lets the page try, but gamma refuses the origin (403 before upgrade).
        dlg = _add_host(app, hosts["gamma"].pair_url())
        note = dlg.locator(".note", has_text="--allow-origin")
        note.wait_for(timeout=WAIT_MS)
        assert _origin(hosts["alpha"].port) in note.inner_text()
        assert host_list.get_by_role("listitem").count() == 2
        app.close_panel()
        app.wait("ready")

        # delta allows the origin, but the app's CSP does not list it: the browser blocks it.
        dlg = _add_host(app, hosts["delta"].pair_url())
        note = dlg.locator(".note", has_text=f"--connect-src {_origin(hosts['delta'].port)}")
        note.wait_for(timeout=WAIT_MS)
        assert host_list.get_by_role("listitem").count() == 2
        app.close_panel()
        app.wait("ready")

        # gamma audited the refused origin; delta never saw a WebSocket (nor a pairing) at all.
        refused = [e for e in _audit(hosts["gamma"]) if e.get("op") == "upgrade"]
        assert [e["origin"] for e in refused] == [_origin(hosts["alpha"].port)], refused
        assert _audit(hosts["delta"]) == []
        assert app.outside == []  # no request left 127.0.0.1
    finally:
        print("\n".join(app.logs[-40:]))
        app.context.close()
