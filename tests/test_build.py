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
