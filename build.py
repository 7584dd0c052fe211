#!/usr/bin/env python3
"""Build the Kite web app into ``dist/web/``: ``python build.py [--out DIR] [--quiet]``.

What ends up there (see docs/web.md):

- ``pyodide/<hash>/``: the vendored Pyodide runtime (from ``node_modules/pyodide``, ``npm ci`` if it
  is missing): only ``pyodide.mjs``, ``pyodide.asm.mjs``, ``pyodide.asm.wasm``,
  ``python_stdlib.zip``.
- ``py/<hash>/``: the ``kite_agent_core`` wheel (``agent_core`` plus the worker's ``kite_web``
  module) and a ``pyodide-lock.json`` listing exactly the wheels shipped, with their real sha256
  (Pyodide checks them with subresource integrity, so a stale hash blocks the load).
- ``app/<hash>/``: the JavaScript shell, the stylesheet.
- ``index.html``, ``sw.js`` (with the precache list inlined: a new build is a new service worker),
  ``precache-manifest.json``, ``manifest.webmanifest``, ``icons/``.
- ``.gz`` and (when the ``brotli`` module is installed) ``.br`` copies of compressible files.

Hashed directories are named after their content, so the bridge may cache them forever and a
new build changes only the URLs of what changed. The wheel is written directly (not by
``pip wheel``) with fixed timestamps and sorted entries: the same sources give the same bytes,
hence the same hash, which is what makes the build incremental and the cache names stable. It
holds only ``agent_core`` (the bridge needs ``websockets``/``cryptography``, absent in Pyodide).

Incremental: a file is written only when its bytes differ from what is on disk; stale hashed
directories of earlier builds are removed. Every write and removal is printed.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
PYODIDE_SRC = ROOT / "node_modules" / "pyodide"
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip")
WHEEL_NAME = "kite_agent_core"
HASH_LEN = 16
COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".json", ".wasm", ".svg", ".webmanifest", ".whl"}
COMPRESS_MIN = 1024
ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)
PYC_CACHE = ROOT / ".cache" / "pyc"
BOOT_MODULES = (
    "kite_web",  # what the worker imports, and what connecting imports lazily:
    "agent_core.channel.crypto_webcrypto",
    "agent_core.transport.ws_browser",
    # what kite_web imports right after `ready` (App._on_connected, _make_agent):
    "agent_core.agent.events",
    "agent_core.agent.local",
    "agent_core.agent.loop",
    "agent_core.agent.permissions",
    "agent_core.agent.session",
    "agent_core.agent.sync",
    "agent_core.agent.undo",
    "agent_core.llm.providers",
    "agent_core.plugins.device",
)
"""Modules whose imports (transitively) get precompiled bytecode in the wheel."""


class Builder:
    """Writes files under `out` only when their content changes, and remembers what it wrote."""

    def __init__(self, out: Path, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.written: list[str] = []
        self.kept: set[str] = set()

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[build] {msg}", flush=True)

    def write(self, rel: str, data: bytes) -> bool:
        """Write `rel` unless it already holds `data`; True if it was written."""
        target = self.out / rel
        self.kept.add(rel)
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        self.written.append(rel)
        self.say(f"wrote {rel} ({len(data):,} bytes)")
        return True

    def compress(self, rel: str, data: bytes, changed: bool) -> None:
        """Precompressed copies, kept only when they save at least a tenth.

        Compressing Pyodide's wasm takes most of a build, so an unchanged file keeps the copies
        already on disk (they were made from the same bytes).
        """
        if Path(rel).suffix not in COMPRESSIBLE or len(data) < COMPRESS_MIN:
            return
        if not changed:
            old = [rel + ext for ext in (".gz", ".br") if (self.out / (rel + ext)).is_file()]
            if old:
                self.kept.update(old)
                return
        gz = gzip.compress(data, compresslevel=9, mtime=0)
        if len(gz) < len(data) * 0.9:
            self.write(rel + ".gz", gz)
        try:
            import brotli  # optional: from PyPI
        except ImportError:
            return
        # quality 11 on the 9.6 MB wasm takes ~90 s on 2 cores for 5% over quality 9; the
        # stored wheel (~1.3 MB) is worth 11
        br = brotli.compress(data, quality=11 if len(data) < (2 << 20) else 9)
        if len(br) < len(data) * 0.9:
            self.write(rel + ".br", br)

    def prune(self) -> None:
        """Remove files of earlier builds (old hashed directories) that this build did not keep."""
        for path in sorted(self.out.rglob("*"), reverse=True):
            rel = path.relative_to(self.out).as_posix()
            if path.is_file() and rel not in self.kept:
                path.unlink()
                self.say(f"removed {rel}")
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:HASH_LEN]


def ensure_node_modules(b: Builder) -> None:
    if all((PYODIDE_SRC / f).is_file() for f in PYODIDE_FILES):
        return
    b.say("node_modules/pyodide missing: running npm ci")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True)


def _version() -> str:
    text = (ROOT / "agent_core" / "__init__.py").read_text()
    m = re.search(r'__version__ = "([^"]+)"', text)
    return m.group(1) if m else "0.0.0"


CPYTHON_ONLY = frozenset(
    {
        "agent_core/channel/crypto_cpython.py",  # cryptography
        "agent_core/transport/ws_cpython.py",  # websockets
        "agent_core/rpc/json_orjson.py",  # orjson
        "agent_core/plugins/engine_wasmtime.py",  # wasmtime
    }
)
"""Platform modules that cannot import under Pyodide (tests/test_runtime.py lists them): not
shipped to browsers, where they would only be bytes on the first visit."""


def wheel_sources() -> dict[str, bytes]:
    """The wheel's Python files by their path inside it: agent_core/ and the worker's modules."""
    files: dict[str, bytes] = {}
    for path in sorted((ROOT / "agent_core").rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if path.relative_to(ROOT).as_posix() in CPYTHON_ONLY:
            continue
        files[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    for path in sorted((WEB / "py").glob("*.py")):
        files[path.name] = path.read_bytes()
    return files


def compile_pyc(b: Builder, sources: dict[str, bytes]) -> dict[str, bytes]:
    """Bytecode for `sources`, compiled by Pyodide's own CPython (web/pyc.mjs under Node).

    The build host's Python (3.11) cannot write bytecode for Pyodide's (3.14), and compiling
    every module on every boot costs the browser ~40 % of the import time. The pycs are
    unchecked-hash ones (PEP 552), valid whatever the unpacked sources' mtimes. Cached in
    .cache/pyc/<hash of sources, Pyodide and the script>/ so an unchanged tree costs nothing;
    without Node the wheel simply ships sources only (a slower boot, said so).
    """
    script = WEB / "pyc.mjs"
    key = digest(
        (PYODIDE_SRC / "package.json").read_bytes(),
        script.read_bytes(),
        *(k.encode() + v for k, v in sorted(sources.items()) if k.endswith(".py")),
    )
    cache = PYC_CACHE / key
    if not (cache / "done").is_file():
        node = shutil.which("node")
        if node is None:
            b.say("node not found: the wheel ships sources only (no precompiled .pyc)")
            return {}
        b.say("compiling .pyc with Pyodide's Python (web/pyc.mjs)")
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "src", Path(tmp) / "out"
            for rel, data in sources.items():
                if rel.endswith(".py"):
                    (src / rel).parent.mkdir(parents=True, exist_ok=True)
                    (src / rel).write_bytes(data)
            run = subprocess.run(
                [node, str(script), str(PYODIDE_SRC), str(src), str(out), "--boot", *BOOT_MODULES],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if run.returncode != 0:
                tail = [ln[:160] for ln in (run.stderr or run.stdout).strip().splitlines()[-3:]]
                b.say(f"compiling .pyc failed, shipping sources only: {' / '.join(tail)}")
                return {}
            if cache.exists():
                shutil.rmtree(cache)
            shutil.copytree(out, cache)
        (cache / "done").write_text(run.stdout)
        # keep the cache small: the four most recent source states
        for old in sorted(PYC_CACHE.iterdir(), key=lambda p: p.stat().st_mtime)[:-4]:
            shutil.rmtree(old, ignore_errors=True)
    report = (cache / "done").read_text()
    boot = re.search(r"^BOOT (.*)$", report, re.M)
    if boot is None:  # a boot module failed to import under Node: ship no bytecode, say so
        why = report.partition("BOOTFAILED")[2].strip().splitlines()[-1:] or ["no BOOT line"]
        b.say(f"web/pyc.mjs could not import the boot modules ({why[0]}): no .pyc shipped")
        return {}
    out_files: dict[str, bytes] = {}
    for rel in json.loads(boot.group(1)):
        parent, _, name = rel.rpartition("/")
        matches = sorted(cache.glob(f"{parent}/__pycache__/{name[:-3]}.*.pyc".lstrip("/")))
        for p in matches:
            out_files[p.relative_to(cache).as_posix()] = p.read_bytes()
    return out_files


def build_wheel(b: Builder | None = None) -> tuple[str, bytes]:
    """A reproducible ``py3-none-any`` wheel of agent_core + kite_web (sorted, fixed timestamps),
    with Pyodide-version bytecode next to the sources when Node is available."""
    version = _version()
    dist_info = f"{WHEEL_NAME}-{version}.dist-info"
    files = wheel_sources()
    if b is not None:
        files.update(compile_pyc(b, files))
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: kite-agent-core\nVersion: {version}\n"
        "Summary: Kite's agent core and web worker, for Pyodide\nRequires-Python: >=3.11\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: kite build.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist_info}/top_level.txt"] = b"agent_core\nkite_web\n"
    record = []
    for name, data in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={h},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    # Stored, not deflated: the bridge serves the wheel brotli-compressed as a whole, which
    # shares redundancy across files (sources and their bytecode) and comes out ~30 % smaller
    # than per-file deflate; unpacking a stored zip is also a plain copy.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, data)
    return f"{WHEEL_NAME}-{version}-py3-none-any.whl", buf.getvalue()


CDN_DEFAULT = re.compile(rb"https://cdn\.jsdelivr\.net/pyodide/v\$\{\w+\}/full/")


def strip_cdn(mjs: bytes) -> bytes:
    """Replace Pyodide's default package CDN with a same-origin path that does not exist.

    The worker always passes ``packageBaseUrl`` (so the default is never used), but a CDN URL in
    the shipped code is one refactoring away from a request leaving the host: make it impossible.
    """
    out = CDN_DEFAULT.sub(b"/no-cdn/", mjs)
    if b"cdn.jsdelivr" in out:
        raise SystemExit(
            "build.py: pyodide.mjs has a CDN URL this build does not know how to strip"
        )
    return out


def build_lock(wheel_name: str, wheel: bytes) -> bytes:
    """Pyodide's lock file, rewritten to list only what is shipped, with the real sha256."""
    upstream = json.loads((PYODIDE_SRC / "pyodide-lock.json").read_text())
    version = wheel_name.split("-")[1]
    lock = {
        "info": upstream["info"],
        "packages": {
            "kite-agent-core": {
                "name": "kite-agent-core",
                "version": version,
                "file_name": wheel_name,
                "install_dir": "site",
                "sha256": hashlib.sha256(wheel).hexdigest(),
                "package_type": "package",
                "imports": ["agent_core", "kite_web"],
                "depends": [],
                "unvendored_tests": False,
                "shared_library": False,
            }
        },
    }
    return (json.dumps(lock, indent=1, sort_keys=True) + "\n").encode()


def render(template: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        return values[m.group(1)]

    return re.sub(r"\{\{(\w+)\}\}", sub, template)


def build(out: Path, quiet: bool = False) -> Builder:
    b = Builder(out, quiet)
    started = time.monotonic()
    ensure_node_modules(b)
    outputs: dict[str, bytes] = {}

    pyodide = {f: (PYODIDE_SRC / f).read_bytes() for f in PYODIDE_FILES}
    pyodide["pyodide.mjs"] = strip_cdn(pyodide["pyodide.mjs"])
    pdir = f"pyodide/{digest(*pyodide.values())}/"
    for name, data in pyodide.items():
        outputs[pdir + name] = data

    wheel_name, wheel = build_wheel(b)
    lock = build_lock(wheel_name, wheel)
    pydir = f"py/{digest(wheel, lock)}/"
    outputs[pydir + wheel_name] = wheel
    outputs[pydir + "pyodide-lock.json"] = lock

    app_src = {p.name: p.read_bytes() for p in sorted((WEB / "app").iterdir()) if p.is_file()}
    adir = f"app/{digest(*(n.encode() + d for n, d in app_src.items()))}/"
    for name, data in app_src.items():
        outputs[adir + name] = data

    for path in sorted((WEB / "icons").iterdir()):
        outputs[f"icons/{path.name}"] = path.read_bytes()
    outputs["manifest.webmanifest"] = (WEB / "manifest.webmanifest").read_bytes()
    values = {"APP": adir, "PYODIDE": pdir, "PY": pydir, "WHEEL": wheel_name}
    outputs["index.html"] = render((WEB / "index.html").read_text(), values).encode()

    precache = sorted(outputs)
    manifest = {
        "version": digest(*(k.encode() + outputs[k] for k in precache)),
        "files": {k: hashlib.sha256(outputs[k]).hexdigest() for k in precache},
    }
    outputs["precache-manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    sw_values = {
        "VERSION": manifest["version"],
        "PRECACHE": json.dumps(["./" if k == "index.html" else k for k in precache]),
    }
    outputs["sw.js"] = render((WEB / "sw.js").read_text(), sw_values).encode()

    for rel, data in outputs.items():
        b.compress(rel, data, b.write(rel, data))
    b.prune()
    total = sum(len(d) for d in outputs.values())
    b.say(
        f"{len(outputs)} files, {total:,} bytes, {len(b.written)} written, "
        f"in {time.monotonic() - started:.1f} s -> {out}"
    )
    return b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist" / "web"), help="output directory")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.add_argument("--clean", action="store_true", help="delete the output directory first")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.clean and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    build(out, args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
