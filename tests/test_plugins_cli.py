"""`kite plugin ...` end to end: new -> build -> test -> install -> trust/sign -> list -> call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bridge.cli import main

pytest.importorskip("wasmtime")


@pytest.fixture
def kite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run `kite ...` in tmp_path with a private config and state dir; returns (rc, stdout)."""
    monkeypatch.setenv("KITE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("KITE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        rc = main(list(argv))
        out = capsys.readouterr()
        return rc, out.out + out.err

    return run


@pytest.mark.parametrize("lang", ["c", "wat", "zig"])
def test_new_build_test_from_scratch_in_well_under_a_minute(kite, tmp_path: Path, lang) -> None:
    """The C template runs on every engine available (the JavaScript one boots Pyodide, ~10 s);
    the others on wasmtime only, to keep the suite fast."""
    engines = [] if lang == "c" else ["--engine", "wasmtime"]
    start = time.monotonic()
    assert kite("plugin", "new", f"demo_{lang}", "--lang", lang)[0] == 0
    project = tmp_path / f"demo_{lang}"
    assert (project / "kite-plugin.json").is_file() and (project / "tests.json").is_file()
    rc, out = kite("plugin", "build", str(project), "--json")
    assert rc == 0, out
    built = json.loads(out)
    assert Path(built["wasm"]).is_file()
    rc, out = kite("plugin", "test", str(project), "--json", *engines)
    assert rc == 0, out
    report = json.loads(out)
    assert report["failed"] == [] and report["passed"] >= 3
    assert "wasmtime" in report["engines"]
    if lang == "c":
        from agent_core.plugins import js_runner

        assert ("js" in report["engines"]) == js_runner.available()
    assert time.monotonic() - start < 60
    manifest = json.loads((project / "kite-plugin.json").read_text())
    assert manifest["wasm"][0]["hash"] == built["sha256"]


def test_a_failing_case_fails_the_command(kite, tmp_path: Path) -> None:
    kite("plugin", "new", "bad", "--lang", "wat")
    tests = tmp_path / "bad" / "tests.json"
    cases = json.loads(tests.read_text())
    cases["cases"][0]["expect"] = {"output": "42"}
    tests.write_text(json.dumps(cases))
    rc, out = kite("plugin", "test", str(tmp_path / "bad"), "--engine", "wasmtime")
    assert rc == 1 and "FAIL" in out and "expected output '42'" in out


def test_install_trust_sign_list_and_call(kite, tmp_path: Path) -> None:
    kite("plugin", "new", "wc", "--lang", "c")
    project = str(tmp_path / "wc")
    assert kite("plugin", "build", project)[0] == 0
    rc, out = kite("plugin", "install", project)
    assert rc == 0 and "not loadable yet" in out and "unsigned" in out
    installed = tmp_path / ".kite" / "plugins" / "wc"
    assert sorted(p.name for p in installed.iterdir()) == ["kite-plugin.json", "wc.wasm"]

    rc, out = kite("plugin", "list", "--json")
    rows = json.loads(out)
    assert rows[0]["name"] == "wc" and rows[0]["loadable"] is False
    rc, out = kite("plugin", "call", "wc", '{"text": "a b"}')
    assert rc == 1 and "not trusted" in out

    assert kite("plugin", "trust", "wc")[0] == 0
    rc, out = kite("plugin", "call", "wc", '{"text": "a b"}')
    assert rc == 0 and json.loads(out) == {"bytes": 3, "lines": 1, "words": 2}

    # a publisher key instead of the name
    assert kite("plugin", "trust", "wc", "--remove")[0] == 0
    rc, out = kite("plugin", "keygen")
    assert rc == 0
    key = next(w for w in out.split() if w.startswith("ed25519:"))
    assert kite("plugin", "sign", project)[0] == 0
    assert kite("plugin", "install", project)[0] == 0
    rows = json.loads(kite("plugin", "list", "--json")[1])
    assert rows[0]["loadable"] is False and "not a trusted publisher key" in rows[0]["trust"]
    assert kite("plugin", "trust", "--key", key)[0] == 0
    rows = json.loads(kite("plugin", "list", "--json")[1])
    assert rows[0]["loadable"] is True and rows[0]["trust"].startswith("signed by trusted key")

    # tampering with the installed module is caught at load
    wasm = installed / "wc.wasm"
    wasm.write_bytes(wasm.read_bytes() + b"\x00")
    rows = json.loads(kite("plugin", "list", "--json")[1])
    assert rows[0]["loadable"] is False and "sha256" in rows[0]["trust"]


def test_host_config_trust_and_limits(kite, tmp_path: Path) -> None:
    from bridge.cli_plugin import load_plugin_host_config

    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "bridge.toml").write_text(
        '[policy]\nread_only = false\n\n[plugins]\ntrusted_unsigned = ["a"]\n'
        "memory_mib = 64\ntimeout_ms = 500\n"
    )
    trust, limits = load_plugin_host_config(cfg)
    assert trust.trusted_unsigned == frozenset({"a"})
    assert limits.memory_bytes == 64 * 1024 * 1024 and limits.timeout_ms == 500
    (cfg / "bridge.toml").write_text('[plugins]\ntrusted_unsignd = ["a"]\n')
    with pytest.raises(Exception, match="unknown"):
        load_plugin_host_config(cfg)


def test_usage_errors_are_one_line(kite, tmp_path: Path) -> None:
    rc, out = kite("plugin", "build", str(tmp_path))
    assert rc == 1 and "no kite-plugin.json" in out
    rc, out = kite("plugin", "new", "Bad Name")
    assert rc == 1 and "name" in out
    rc, out = kite("plugin", "call", "nothing")
    assert rc == 1 and "no installed plugin" in out
