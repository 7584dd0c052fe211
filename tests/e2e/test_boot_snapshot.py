"""The boot path in a real Chromium against a real bridge: after the first visit a Python memory
snapshot is saved in Cache Storage; the next visit restores it (no CPython start-up), connects,
and the agent still works (`/read` through the bridge); a corrupt snapshot is dropped and the
app boots without it. Same skips as test_web.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_web import _reason, _wait_state, bridge, browser  # noqa: F401
from tests.harness import BridgeProcess

pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

# the cache name and the stored entry's size, once the entry is written (open() comes first)
HAS_SNAPSHOT = """caches.keys().then(async (keys) => {
  const names = keys.filter((n) => n.startsWith("kitesnap-"));
  if (names.length !== 1) return names.length ? names : null;
  const res = await (await caches.open(names[0])).match("/snapshot");
  return res ? [names[0], (await res.arrayBuffer()).byteLength] : null;
})"""


def _poll(page: object, expr: str, timeout_s: float = 120) -> object:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(expr)  # type: ignore[attr-defined]
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {expr}")


def _read_readme(page: object) -> None:
    page.get_by_role("textbox", name="Message").fill("/read README.md")  # type: ignore[attr-defined]
    page.get_by_role("button", name="Send").click()  # type: ignore[attr-defined]
    page.get_by_text("Kite e2e marker 4711").last.wait_for(timeout=30_000)  # type: ignore[attr-defined]


def test_snapshot_saved_restored_and_corrupt_one_dropped(
    bridge: BridgeProcess,  # noqa: F811
    browser: object,  # noqa: F811
    web_dir: Path,
) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(bridge.pair_url())
    _wait_state(page, ("ready",))
    first = page.evaluate("window.kiteTimings")
    assert first["snapshot"] == "none", first

    found = _poll(page, HAS_SNAPSHOT)  # saved by the background snapshot worker
    assert isinstance(found, list) and len(found) == 2, found
    name, size = found
    assert size > 10_000_000  # a wasm memory image, tens of MB

    page.reload()
    _wait_state(page, ("ready",))
    again = page.evaluate("window.kiteTimings")
    assert again["snapshot"] == "used", again
    _read_readme(page)  # the restored interpreter reaches the bridge and runs a tool

    # a damaged snapshot: dropped, the boot goes on without it, a new one is made later
    page.evaluate(
        f"caches.open({name!r}).then((c) => c.put('/snapshot', new Response(new Uint8Array(64))))"
    )
    page.reload()
    _wait_state(page, ("ready",))
    third = page.evaluate("window.kiteTimings")
    assert third["snapshot"] == "none", third
    _read_readme(page)
    context.close()
