"""Conformance: every example plugin and every sandbox attack, on every engine, same outcome.

Engines: Kite's host on wasmtime; Kite's host on the JavaScript `WebAssembly` engine (when the
Pyodide runner is available); the official Extism Python SDK (test-only dependency), which proves
the plugins use nothing but the Extism ABI. Kite's engines must agree exactly (output, or error
kind); Extism reports errors without a kind, so against it only success/failure and output count.
After every attack the same plugin instance must still answer a normal call.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_core.plugins import sdk
from agent_core.plugins.manifest import Manifest, load_manifest
from tests.plugins import EXAMPLE_NAMES, built, source_dir

pytest.importorskip("wasmtime")


def engine_runners() -> tuple[dict[str, sdk.Runner], list[str]]:
    from agent_core.plugins.engine_wasmtime import WasmtimeEngine

    runners: dict[str, sdk.Runner] = {
        "kite-wasmtime": sdk.kite_runner(),
        # the browser engine's time limit (instrumented modules, meter.py) on wasmtime
        "kite-metered": sdk.kite_runner(engine=WasmtimeEngine.shared(metered=True)),
    }
    coarse = []
    extism = sdk.extism_runner()
    if extism is not None:
        runners["extism"] = extism
        coarse.append("extism")
    return runners, coarse


@pytest.fixture(scope="module")
def runners() -> tuple[dict[str, sdk.Runner], list[str]]:
    return engine_runners()


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_cases_pass_and_agree_on_every_engine(name: str, runners) -> None:
    engines, coarse = runners
    results = sdk.run_tests(built(name), engines, coarse, source_dir(name) / "tests.json")
    assert results, f"{name} has no test cases"
    failures = [f"{r.name}: {'; '.join(r.problems)}" for r in results if not r.passed]
    assert not failures, "\n".join(failures)


def test_the_extism_sdk_is_part_of_the_run(runners) -> None:
    """The ABI cross-check is the point of the suite: fail loudly if it silently dropped out."""
    engines, _ = runners
    assert "extism" in engines, "pip install extism (test dependency) to check ABI compatibility"


# -- attacks ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A local HTTP server: 127.0.0.1 is on the attack plugin's allowlist."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"pong")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/ping"
    server.shutdown()


@pytest.fixture(scope="module")
def attacks() -> tuple[Manifest, bytes]:
    m = load_manifest(built("attacks"))
    return m, m.load_wasm()


# (function, input, expected kind or None for success, expected output or error fragment)
ATTACKS = [
    ("loop", "", "timeout", "time limit of 300 ms"),
    ("grow", "", "memory", "memory limit (32 MiB"),
    ("kernel_grow", "", "memory", "memory limit"),
    ("stack", "", "trap", "call stack exhausted"),
    ("trap", "", "trap", "unreachable"),
    ("big_output", "", "too_big", "over the limit of 4194304"),
    ("http", "http://example.com/", "forbidden", "not in the plugin's allowed_hosts"),
    ("http", "http://127.0.0.1.evil.example/", "forbidden", "not in the plugin's allowed_hosts"),
    ("http", "http://user@example.com/", "forbidden", "not allowed"),
    ("http", "file:///etc/passwd", "forbidden", "not allowed"),
    ("read_file", "../../../../etc/passwd", "error", "path_open refused"),
    ("read_file", "/etc/passwd", "error", "path_open refused"),
    ("read_file", "../attacks/../../x", "error", "path_open refused"),
    ("fail", "custom failure", "error", "custom failure"),
    ("rc", "", "error", "error code 7"),
]


@pytest.mark.parametrize(("function", "data", "kind", "detail"), ATTACKS)
def test_attack_is_refused_alike_everywhere_and_the_host_survives(
    function: str, data: str, kind: str, detail: str, runners, attacks
) -> None:
    engines, coarse = runners
    manifest, wasm = attacks
    outcomes = {n: run(manifest, wasm, function, data.encode()) for n, run in engines.items()}
    for name, got in outcomes.items():
        assert not got.ok, f"{name}: {function} was not refused: {got.describe()}"
        if name not in coarse:
            assert got.kind == kind, f"{name}: {got.describe()}"
            assert detail in got.message, f"{name}: {got.message}"
    kinds = {n: o.kind for n, o in outcomes.items() if n not in coarse}
    assert len(set(kinds.values())) == 1, kinds
    # the same instance still works
    for name, run in engines.items():
        after = run(manifest, wasm, "echo", b"still here")
        assert after.ok and after.output == b"still here", f"{name}: {after.describe()}"


def test_allowed_host_file_in_scratch_config_and_vars_work_alike(runners, attacks, web) -> None:
    engines, _ = runners
    manifest, wasm = attacks
    calls = [
        ("http", web, b"pong"),
        ("write_file", "kept in scratch", b""),
        ("read_file", "note.txt", b"kept in scratch"),
        ("config", "greeting", b"hello"),
    ]
    for name, run in engines.items():
        for function, data, want in calls:
            got = run(manifest, wasm, function, data.encode())
            assert got.ok and got.output == want, f"{name} {function}: {got.describe()}"
        first = run(manifest, wasm, "count", b"")
        second = run(manifest, wasm, "count", b"")
        assert first.ok and second.ok, (first, second)
        assert int(second.output) == int(first.output) + 1, name


def test_a_large_input_grows_the_kernel_and_round_trips(attacks) -> None:
    # fresh instances: Extism keeps a plugin's grown memory after the memory attacks above
    engines, _ = engine_runners()
    manifest, wasm = attacks
    data = bytes(range(256)) * 8192  # 2 MiB: past the kernel's first pages
    for name, run in engines.items():
        got = run(manifest, wasm, "echo", data)
        assert got.ok and got.output == data, name
        small = run(manifest, wasm, "echo", b"x")
        assert small.ok and small.output == b"x", name


def test_example_tools_match_python_reference() -> None:
    """json_fmt's pretty-printing is json.dumps(indent=2) for integer-only documents."""
    runner = sdk.kite_runner()
    manifest = load_manifest(built("json_fmt"))
    wasm = manifest.load_wasm()
    doc = {"name": "kite", "list": [1, 2, {"deep": [None, True, False]}], "empty": {}, "s": "é"}
    text = json.dumps(doc, ensure_ascii=False)
    for indent in (0, 2, 4):
        got = runner(
            manifest, wasm, "format", json.dumps({"text": text, "indent": indent}).encode()
        )
        assert got.ok, got.describe()
        formatted = json.loads(got.output)["formatted"]
        if indent:
            assert formatted == json.dumps(doc, indent=indent, ensure_ascii=False)
        else:
            assert formatted == json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def test_runner_sources_exist() -> None:
    for name in [*EXAMPLE_NAMES, "attacks", "echo"]:
        assert (source_dir(name) / "kite-plugin.json").is_file()
        assert Path(source_dir(name)).is_dir()


# -- the scratch directory's byte cap --------------------------------------------------------

QUOTA = 64 * 1024
# A note, then `fill` writes 64 x 4 KiB until the cap refuses a block (ENOSPC = errno 51);
# the files written before stay, and the plugin still works.
QUOTA_CALLS = [
    ("write_file", b"x" * 1000),
    ("fill", b"f" * 4096),
    ("read_file", b"note.txt"),
    ("write_file", b"after the cap"),
    ("read_file", b"note.txt"),
]
QUOTA_EXPECT = [
    (True, b""),
    (False, "path_open refused (errno 51)"),
    (True, b"x" * 1000),
    (True, b""),
    (True, b"after the cap"),
]


def quota_outcomes_match(outcomes: list[sdk.Outcome], engine: str) -> None:
    assert len(outcomes) == len(QUOTA_EXPECT)
    for (function, _), got, (ok, want) in zip(QUOTA_CALLS, outcomes, QUOTA_EXPECT, strict=True):
        assert got.ok == ok, f"{engine}: {function}: {got.describe()}"
        if ok:
            assert got.output == want, f"{engine}: {function}: {got.output[:40]!r}"
        else:
            assert got.kind == "error" and str(want) in got.message, f"{engine}: {got.message}"


def test_scratch_quota_holds_alike_on_the_host(tmp_path: Path, attacks) -> None:
    """The host's scratch directory is capped in bytes like the browser's in-memory one: a
    plugin writing past it gets ENOSPC, and the disk holds no more than the cap."""
    from agent_core.plugins.engine_wasmtime import WasmtimeEngine
    from agent_core.plugins.manifest import TrustPolicy
    from agent_core.plugins.plugin import Plugin, PluginHost
    from agent_core.plugins.sandbox import HostLimits, PluginError

    manifest, wasm = attacks
    for engine in ("kite-wasmtime", "kite-metered"):
        root = tmp_path / engine
        host = PluginHost(
            trust=TrustPolicy(trusted_unsigned=frozenset({"attacks"})),
            limits=HostLimits(scratch_bytes=QUOTA),
            scratch_root=root,
            engine=WasmtimeEngine.shared(metered=engine == "kite-metered"),
        )
        plugin = Plugin(manifest, wasm, host)
        outcomes = []
        for function, data in QUOTA_CALLS:
            try:
                outcomes.append(sdk.Outcome(True, plugin.call(function, data)))
            except PluginError as exc:
                outcomes.append(sdk.Outcome(False, kind=exc.kind, message=str(exc)))
        quota_outcomes_match(outcomes, engine)
        files = {p.name: p.stat().st_size for p in (root / "attacks").iterdir()}
        assert files == {"note.txt": len(b"after the cap"), "fill.bin": QUOTA - 4096}, files
        assert sum(files.values()) <= QUOTA
        plugin.close()
        # A new instance (a restart) finds the files where the last one left them.
        again = Plugin(manifest, wasm, host)
        assert again.call("read_file", b"note.txt") == b"after the cap"
        with pytest.raises(PluginError, match="errno 51"):  # fill.bin truncated, refilled
            again.call("fill", b"g" * 4096)
        again.close()
        assert sum(p.stat().st_size for p in (root / "attacks").iterdir()) <= QUOTA
