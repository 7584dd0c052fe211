"""The conformance suite on the browser's engine: Kite's host over JavaScript `WebAssembly`.

Every example case and every attack of test_plugins_conformance.py runs inside Pyodide under Node
(one boot, one batch) and must give exactly what Kite on wasmtime gives: the same output, or the
same error kind. Needs Node, `npm ci` and the Pyodide test wheels (tests/pyodide/); skipped
otherwise. The allowed-host HTTP call is not in the batch: Node offers no synchronous HTTP to a
plugin (a browser worker has synchronous XHR), so there it would be refused, not fetched.
"""

from __future__ import annotations

import json

import pytest

from agent_core.plugins import js_runner, sdk
from agent_core.plugins.manifest import load_manifest
from tests.plugins import EXAMPLE_NAMES, built, source_dir
from tests.test_plugins_conformance import ATTACKS

pytest.importorskip("wasmtime")
if not js_runner.available():
    pytest.skip("Pyodide under Node is not set up (npm ci; tests/pyodide)", allow_module_level=True)


def _calls(name: str) -> list[tuple[str, bytes]]:
    if name == "attacks":
        calls = []
        for function, data, _kind, _detail in ATTACKS:
            calls += [(function, data.encode()), ("echo", b"still here")]
        calls += [
            ("write_file", b"kept in scratch"),
            ("read_file", b"note.txt"),
            ("config", b"greeting"),
            ("count", b""),
            ("count", b""),
            ("echo", bytes(range(256)) * 8192),
        ]
        return calls
    cases = json.loads((source_dir(name) / "tests.json").read_text())["cases"]
    return [(c["function"], sdk._case_input(c)) for c in cases]


@pytest.fixture(scope="module", params=[False, True], ids=["", "no-eval"])
def js_outcomes(request: pytest.FixtureRequest) -> dict[str, list[sdk.Outcome]]:
    """no-eval: as in the web app, whose Content-Security-Policy forbids evaluating JavaScript
    (the engine then does without its one-crossing exchange helper)."""
    names = [*EXAMPLE_NAMES, "attacks"]
    plugins = []
    for name in names:
        m = load_manifest(built(name))
        plugins.append((m, m.load_wasm(), _calls(name)))
    return dict(zip(names, js_runner.run_batch(plugins, no_eval=request.param), strict=True))


@pytest.mark.parametrize("name", [*EXAMPLE_NAMES, "attacks"])
def test_javascript_engine_matches_wasmtime(name: str, js_outcomes) -> None:
    m = load_manifest(built(name))
    wasm = m.load_wasm()
    run = sdk.kite_runner()
    calls = _calls(name)
    assert len(js_outcomes[name]) == len(calls)
    for (function, data), js in zip(calls, js_outcomes[name], strict=True):
        native = run(m, wasm, function, data)
        assert js.same_as(native), (
            f"{name}.{function}({data[:40]!r}): js gave {js.describe()}, "
            f"wasmtime gave {native.describe()}"
        )
        if not native.ok:
            assert js.message.split(":")[0] == native.message.split(":")[0]


def test_scratch_quota_on_the_javascript_engine() -> None:
    """The same byte cap, the same ENOSPC, in the browser's engine (in-memory files)."""
    from tests.test_plugins_conformance import QUOTA, QUOTA_CALLS, quota_outcomes_match

    m = load_manifest(built("attacks"))
    [outcomes] = js_runner.run_batch(
        [(m, m.load_wasm(), QUOTA_CALLS)], limits={"scratch_bytes": QUOTA}
    )
    quota_outcomes_match(outcomes, "js")
