"""build.py: the expected files, lock hashes that match the wheels shipped, stable hashed names,
and an incremental second run that rewrites nothing. Skips if Pyodide is not in node_modules."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import build  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (REPO / "node_modules" / "pyodide" / "pyodide.asm.wasm").is_file(),
    reason="node_modules/pyodide is missing (npm ci)",
)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("web")
    build.build(target, quiet=True)
    return target


def _one(out: Path, pattern: str) -> Path:
    found = sorted(out.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_expected_files(out: Path) -> None:
    for name in ("index.html", "sw.js", "manifest.webmanifest", "precache-manifest.json"):
        assert (out / name).is_file(), name
    for name in build.PYODIDE_FILES:
        assert _one(out, f"pyodide/*/{name}").stat().st_size > 0
    _one(out, "py/*/pyodide-lock.json")
    _one(out, "app/*/main.js")
    _one(out, "app/*/worker.js")
    assert _one(out, "pyodide/*/pyodide.asm.wasm.gz").stat().st_size < 5_000_000
    # nothing of Pyodide's beyond what the runtime needs
    assert {p.name for p in _one(out, "pyodide/*/pyodide.mjs").parent.iterdir()} <= {
        n + ext for n in build.PYODIDE_FILES for ext in ("", ".gz", ".br")
    }
    manifest = json.loads((out / "manifest.webmanifest").read_text())
    assert manifest["display"] == "standalone"
    html = (out / "index.html").read_text()
    assert "<script>" not in html and "{{" not in html and "http" not in html
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".mjs", ".js", ".json", ".html"):
            assert b"cdn.jsdelivr" not in path.read_bytes(), path


def test_lock_hashes_match_wheels(out: Path) -> None:
    lock_path = _one(out, "py/*/pyodide-lock.json")
    lock = json.loads(lock_path.read_text())
    assert lock["info"]["python"].startswith("3.")
    assert lock["packages"]
    for entry in lock["packages"].values():
        wheel = lock_path.parent / entry["file_name"]
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == entry["sha256"]


def test_precache_manifest_matches_files(out: Path) -> None:
    manifest = json.loads((out / "precache-manifest.json").read_text())
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == sha, rel
    sw = (out / "sw.js").read_text()
    assert manifest["version"] in sw
    assert "https://" not in sw and "cdn" not in sw.lower()


def test_incremental_and_stable(out: Path, tmp_path: Path) -> None:
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = build.build(out, quiet=True)
    assert again.written == []
    after = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before
    # a fresh directory gets the same hashed names and bytes
    other = tmp_path / "web"
    build.build(other, quiet=True)
    assert json.loads((other / "precache-manifest.json").read_text()) == json.loads(
        (out / "precache-manifest.json").read_text()
    )


def test_wheel_is_stored_with_pyodide_bytecode(out: Path) -> None:
    """Stored entries (brotli compresses the whole wheel better); unchecked-hash .pyc for the
    modules a boot imports, compiled by Pyodide's CPython (its cache tag, not the host's)."""
    import shutil
    import zipfile

    wheel = _one(out, "py/*/*.whl")
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        names = {i.filename for i in infos}
        assert "kite_web.py" in names and "agent_core/client.py" in names
        # CPython-only platform modules (the ones tests/test_runtime.py lists) are not shipped
        from tests.test_runtime import PLATFORM_MODULES

        cpython = {
            m.replace(".", "/") + ".py" for m, r in PLATFORM_MODULES.items() if r == "cpython"
        }
        assert cpython == build.CPYTHON_ONLY
        assert not cpython & names
        if shutil.which("node") is None:
            pytest.skip("node is missing: the wheel ships sources only")
        pycs = sorted(n for n in names if n.endswith(".pyc"))
        assert "__pycache__/kite_web.cpython-314.pyc" in pycs, pycs[:5]
        assert any(n.startswith("agent_core/channel/__pycache__/noise.") for n in pycs)
        # a CPython-only module is never imported in the browser: no bytecode for it
        assert not any("crypto_cpython" in n for n in pycs)
        for name in pycs:
            src = name.replace("__pycache__/", "").rsplit(".", 2)[0] + ".py"
            assert src in names, name  # sources stay (tracebacks, inspect)
            header = zf.read(name)[:16]
            flags = int.from_bytes(header[4:8], "little")
            assert flags == 0b01, (name, flags)  # hash-based, not checked against the source
    br = wheel.with_name(wheel.name + ".br")
    assert br.is_file() and br.stat().st_size < wheel.stat().st_size * 0.4


def test_boot_files_are_shipped(out: Path) -> None:
    boot = _one(out, "app/*/boot.js").read_text()
    worker = _one(out, "app/*/worker.js").read_text()
    assert 'from "./boot.js"' in worker and "listenForWasm()" in worker
    snapshot = _one(out, "app/*/snapshot.js").read_text()
    assert "makeSnapshot" in snapshot and "_loadSnapshot" in boot and "kitesnap-" in boot
    assert "integrity" in boot and "unpackArchive" in boot
    for call in ("micropip.install", "loadPackage(", "import micropip"):
        assert call not in boot + worker, call
