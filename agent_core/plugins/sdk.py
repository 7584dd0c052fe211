"""The plugin SDK behind `kite plugin new|build|test|sign|keygen|install` (CPython, offline).

- build: C and Zig through the `ziglang` package's compiler (`python -m ziglang`), WAT through
  wasmtime's `wat2wasm`; writes `<name>.wasm` next to the manifest and pins its sha256 there.
  Builds are cached by a key over the sources, flags and compiler, so a rebuild is free.
- test: runs the cases of `tests.json` on every available engine (Kite on wasmtime, Kite on
  Pyodide's WebAssembly when a runner is given, the official Extism SDK when installed) and fails
  when an expectation is not met or the engines disagree.
- sign / keygen: Ed25519 via `cryptography`; verification is pure Python (manifest.py).
- install: copies the manifest and module (nothing else) into a plugins directory, after checking
  the module's hash.

Standard library only at import time; compilers and wasmtime are used when a command runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent_core.plugins import wasmbin
from agent_core.plugins.manifest import (
    MANIFEST_FILE,
    Manifest,
    TrustPolicy,
    check_hash,
    key_id,
    load_manifest,
    sign_manifest,
    validate,
)
from agent_core.plugins.sandbox import HostLimits, PluginError

TESTS_FILE = "tests.json"
BUILD_STATE = ".kite-build.json"
LANGS = ("c", "zig", "wat")
C_FLAGS = ["-O2", "-nostdlib", "-Wl,--no-entry", "-Wl,--strip-all", "-g0"]


class SdkError(Exception):
    """A command failed; the message is for the user."""


def templates_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("templates")))


def pdk_include_dir() -> Path:
    """Where kite_pdk.h lives (added to every C build's include path)."""
    return templates_dir() / "c"


# -- new -------------------------------------------------------------------------------------


def new_project(dest: Path, name: str, lang: str) -> list[Path]:
    """Create a plugin project from the template for `lang`; returns the files written."""
    if lang not in LANGS:
        raise SdkError(f"unknown language {lang!r} (choose from {', '.join(LANGS)})")
    try:
        validate({"name": name, "wasm": [{"path": "x.wasm", "hash": "0" * 64}]})
    except PluginError as exc:
        raise SdkError(str(exc)) from None
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise SdkError(f"{dest} exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    src = templates_dir() / lang
    written = []
    for f in sorted(src.iterdir()):
        if f.is_dir() or f.name.startswith("."):
            continue
        fname = f.name.removesuffix(".tmpl")
        if fname.startswith("plugin."):
            fname = name + fname[len("plugin") :]
        target = dest / fname
        text = f.read_text(encoding="utf-8").replace("{{name}}", name)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


# -- build -----------------------------------------------------------------------------------


@dataclass
class BuildResult:
    wasm: Path
    manifest: Path
    sha256: str
    cached: bool
    command: list[str] = field(default_factory=list)


def _build_spec(project: Path, raw: dict[str, Any]) -> dict[str, Any]:
    spec = dict((raw.get("kite") or {}).get("build") or {})
    if "sources" not in spec:
        for lang, pattern in (("wat", "*.wat"), ("zig", "*.zig"), ("c", "*.c")):
            found = sorted(p.name for p in project.glob(pattern))
            if found:
                spec.setdefault("lang", lang)
                spec["sources"] = found
                break
        else:
            raise SdkError(f"no sources in {project} (*.c, *.zig or *.wat)")
    lang = spec.setdefault("lang", Path(spec["sources"][0]).suffix.lstrip("."))
    if lang not in LANGS:
        raise SdkError(f"unknown build language {lang!r}")
    return spec


def _compiler_version() -> str:
    try:
        from importlib.metadata import version

        return "ziglang " + version("ziglang")
    except Exception:
        return "ziglang ?"


def _build_key(project: Path, spec: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    h.update(_compiler_version().encode())
    files = [project / s for s in spec["sources"]]
    dirs = [project, pdk_include_dir(), *(project / d for d in spec.get("include", []))]
    for d in dirs:
        files.extend(sorted(d.glob("*.h")))
    for f in files:
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip()
        raise SdkError(f"build failed ({' '.join(cmd[:4])} ...):\n{out}")


def compile_sources(project: Path, spec: dict[str, Any], out: Path) -> list[str]:
    """Compile a project's sources to `out`; returns the command used (empty for WAT)."""
    lang = spec["lang"]
    sources = [str(project / s) for s in spec["sources"]]
    if lang == "wat":
        import wasmtime

        if len(sources) != 1:
            raise SdkError("a WAT plugin has exactly one source file")
        try:
            out.write_bytes(bytes(wasmtime.wat2wasm(Path(sources[0]).read_text())))
        except wasmtime.WasmtimeError as exc:
            raise SdkError(f"WAT does not compile: {exc}") from None
        return []
    zig = [sys.executable, "-m", "ziglang"]
    wasi = spec.get("target") == "wasi"
    target = "wasm32-wasi" if wasi else "wasm32-freestanding"
    if lang == "c":
        includes = [project, *(project / d for d in spec.get("include", [])), pdk_include_dir()]
        flags = [f for f in C_FLAGS if not (wasi and f == "-nostdlib")]
        if wasi:
            flags.append("-mexec-model=reactor")
        cmd = [*zig, "cc", f"--target={target}", *flags]
        cmd += [f"-I{d}" for d in includes] + list(spec.get("flags", []))
        cmd += [*sources, "-o", str(out)]
    else:
        if len(sources) != 1:
            raise SdkError("a Zig plugin has one root source file")
        cmd = [*zig, "build-exe", sources[0], "-target", target, "-O", "ReleaseSmall"]
        cmd += ["-fno-entry", "-rdynamic", "-fstrip", f"-femit-bin={out}"]
        cmd += list(spec.get("flags", []))
    with tempfile.TemporaryDirectory(prefix="kite-build-") as tmp:
        _run(cmd, Path(tmp))
    return cmd


def build(project: Path, out_dir: Path | None = None, force: bool = False) -> BuildResult:
    """Build the plugin in `project` into `out_dir` (default: the project itself).

    Writes `<out_dir>/<name>.wasm` and `<out_dir>/kite-plugin.json` with the module's sha256
    pinned (a previous signature is dropped: the manifest changed, sign it again).
    """
    project = Path(project).resolve()
    out_dir = project if out_dir is None else Path(out_dir).resolve()
    try:
        raw = json.loads((project / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SdkError(f"cannot read {project / MANIFEST_FILE}: {exc}") from None
    spec = _build_spec(project, raw)
    name = raw.get("name") or project.name
    out_dir.mkdir(parents=True, exist_ok=True)
    wasm_path = out_dir / f"{name}.wasm"
    key = _build_key(project, spec)
    state_file = out_dir / BUILD_STATE
    cached = False
    cmd: list[str] = []
    try:
        state = json.loads(state_file.read_text())
        cached = (
            not force
            and state.get("key") == key
            and wasm_path.is_file()
            and hashlib.sha256(wasm_path.read_bytes()).hexdigest() == state.get("sha256")
        )
    except (OSError, ValueError):
        pass
    if not cached:
        tmp_out = wasm_path.with_suffix(".wasm.tmp")
        cmd = compile_sources(project, spec, tmp_out)
        try:
            wasmbin.parse(tmp_out.read_bytes())
        except wasmbin.WasmFormatError as exc:
            raise SdkError(f"the compiler produced an unusable module: {exc}") from None
        os.replace(tmp_out, wasm_path)
    digest = hashlib.sha256(wasm_path.read_bytes()).hexdigest()
    raw.pop("signature", None)
    raw["wasm"] = [{"path": wasm_path.name, "hash": digest}]
    try:
        validate(raw)
    except PluginError as exc:
        raise SdkError(str(exc)) from None
    manifest_path = out_dir / MANIFEST_FILE
    _write_json(manifest_path, raw)
    state_file.write_text(json.dumps({"key": key, "sha256": digest}))
    return BuildResult(wasm_path, manifest_path, digest, cached, cmd)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- sign / keygen ---------------------------------------------------------------------------


def keygen(private_path: Path) -> str:
    """Write a new Ed25519 private key (PEM, mode 0600); return its public key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(private_path)
    if private_path.exists():
        raise SdkError(f"{private_path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key_id(key.public_key().public_bytes_raw())


def load_private_key(path: Path) -> bytes:
    """The 32-byte Ed25519 seed from a PEM file written by `keygen`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SdkError(f"cannot load the private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SdkError(f"{path} is not an Ed25519 private key")
    return key.private_bytes_raw()


def sign(project: Path, private_key: bytes) -> str:
    """Sign the manifest in `project` in place (after checking its module's hash)."""
    manifest = load_manifest(Path(project))
    manifest.load_wasm()  # the signature must cover the module that is actually there
    signed = sign_manifest(manifest.raw, private_key)
    _write_json(Path(project) / MANIFEST_FILE, signed)
    return signed["signature"]["key"]


# -- install ---------------------------------------------------------------------------------


def install(project: Path, plugins_dir: Path, replace: bool = True) -> Path:
    """Copy a built plugin (manifest + module only) to `<plugins_dir>/<name>/`."""
    manifest = load_manifest(Path(project))
    data = manifest.load_wasm()
    entry = manifest.raw["wasm"][0]
    if "path" in entry and (Path(entry["path"]).is_absolute() or "/" in entry["path"]):
        raise SdkError("the manifest's wasm path must be a file name next to it to install")
    dest = Path(plugins_dir) / manifest.name
    if dest.exists():
        if not replace:
            raise SdkError(f"{dest} exists")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if "path" in entry:
        (dest / entry["path"]).write_bytes(data)
    shutil.copyfile(
        Path(project) / MANIFEST_FILE if Path(project).is_dir() else project, dest / MANIFEST_FILE
    )
    check_hash(manifest.name, data, manifest.wasm_hash)
    return dest


# -- test ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one call produced: output bytes, or an error kind and message."""

    ok: bool
    output: bytes = b""
    kind: str = ""
    message: str = ""

    def same_as(self, other: Outcome, coarse: bool = False) -> bool:
        if self.ok != other.ok:
            return False
        if self.ok:
            return self.output == other.output
        return coarse or self.kind == other.kind

    def describe(self) -> str:
        if self.ok:
            text = self.output.decode("utf-8", "replace")
            return text if len(text) < 200 else text[:200] + "..."
        return f"error[{self.kind}]: {self.message}"


# An engine runner: (manifest, wasm bytes, function, input) -> Outcome. Coarse runners (the
# official Extism SDK) only report success/failure, not the kind of failure.
Runner = Callable[[Manifest, bytes, str, bytes], Outcome]


def kite_runner(
    engine: Any = None, host_limits: HostLimits | None = None, http: Any = "default"
) -> Runner:
    """Run calls on Kite's host over `engine` (default: this runtime's engine)."""
    from agent_core.plugins.plugin import Plugin, PluginHost
    from agent_core.plugins.sandbox import UrllibHttpClient

    if http == "default":
        http = UrllibHttpClient() if sys.platform != "emscripten" else None

    cache: dict[str, Plugin] = {}

    def run(manifest: Manifest, wasm: bytes, function: str, data: bytes) -> Outcome:
        key = manifest.wasm_hash
        try:
            plugin = cache.get(key)
            if plugin is None:
                host = PluginHost(
                    trust=TrustPolicy(trusted_unsigned=frozenset({manifest.name})),
                    limits=host_limits or HostLimits(),
                    scratch_root=Path(tempfile.mkdtemp(prefix="kite-plugin-test-")),
                    engine=engine,
                    http=http,
                )
                plugin = cache[key] = Plugin(manifest, wasm, host)
            return Outcome(True, plugin.call(function, data))
        except PluginError as exc:
            return Outcome(False, kind=exc.kind, message=str(exc))

    return run


def extism_runner() -> Runner | None:
    """The official Extism Python SDK as a cross-check, if installed (a test dependency)."""
    try:
        import extism
    except ImportError:
        return None
    cache: dict[str, Any] = {}

    def run(manifest: Manifest, wasm: bytes, function: str, data: bytes) -> Outcome:
        key = manifest.wasm_hash
        try:
            plugin = cache.get(key)
            if plugin is None:
                info = wasmbin.parse(wasm)
                uses_wasi = any(i.module == "wasi_snapshot_preview1" for i in info.imports)
                ext = manifest.to_extism()
                ext["wasm"] = [{"data": base64.b64encode(wasm).decode()}]
                if manifest.allowed_paths:  # Extism maps host paths: give it a scratch dir
                    scratch = Path(tempfile.mkdtemp(prefix="kite-extism-scratch-"))
                    ext["allowed_paths"] = {
                        str((scratch / rel).resolve()): guest
                        for rel, guest in manifest.allowed_paths.items()
                    }
                    for host_dir in ext["allowed_paths"]:
                        Path(host_dir).mkdir(parents=True, exist_ok=True)
                plugin = cache[key] = extism.Plugin(ext, wasi=uses_wasi, functions=[])
            return Outcome(True, bytes(plugin.call(function, data)))
        except extism.Error as exc:
            return Outcome(False, kind="error", message=str(exc))

    return run


@dataclass
class CaseResult:
    name: str
    passed: bool
    outcomes: dict[str, Outcome]
    problems: list[str]


def _case_input(case: dict[str, Any]) -> bytes:
    data = case.get("input", "")
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data, ensure_ascii=False).encode()


def _check(case: dict[str, Any], got: Outcome) -> str | None:
    expect = case.get("expect", {})
    if "error" in expect:
        if got.ok:
            return f"expected an error [{expect['error']}], got output {got.describe()}"
        if expect["error"] not in ("*", got.kind):
            return f"expected error kind {expect['error']}, got {got.describe()}"
        want = expect.get("error_contains")
        if want and want not in got.message:
            return f"expected the error to mention {want!r}, got {got.message!r}"
        return None
    if not got.ok:
        return f"unexpected {got.describe()}"
    text = got.output.decode("utf-8", "replace")
    if "output" in expect and text != expect["output"]:
        return f"expected output {expect['output']!r}, got {text!r}"
    if "json" in expect:
        try:
            value = json.loads(text)
        except ValueError:
            return f"expected JSON output, got {text!r}"
        if value != expect["json"]:
            return f"expected {json.dumps(expect['json'])}, got {text}"
    if "contains" in expect and expect["contains"] not in text:
        return f"expected output containing {expect['contains']!r}, got {text!r}"
    return None


def run_tests(
    project: Path,
    runners: dict[str, Runner],
    coarse: Sequence[str] = (),
    cases_file: Path | None = None,
) -> list[CaseResult]:
    """Run the cases of `tests.json` (or `cases_file`) against a built plugin on each runner.

    A case passes when its expectation holds on every runner and all runners agree (coarse
    runners only on success and output)."""
    project = Path(project)
    manifest = load_manifest(project)
    wasm = manifest.load_wasm()
    cases_file = cases_file or project / TESTS_FILE
    try:
        cases = json.loads(Path(cases_file).read_text(encoding="utf-8"))["cases"]
    except (OSError, ValueError, KeyError) as exc:
        raise SdkError(f"cannot read {cases_file}: {exc}") from None
    default_fn = manifest.tools[0].function if manifest.tools else ""
    calls = [(c.get("function") or default_fn, _case_input(c)) for c in cases]
    # Runners with a `batch` method (the JavaScript engine: one Pyodide boot) get all at once.
    batched = {
        rn: runner.batch(manifest, wasm, calls)
        for rn, runner in runners.items()
        if hasattr(runner, "batch")
    }
    results = []
    for i, case in enumerate(cases):
        name = case.get("name") or f"case {i + 1}"
        function, data = calls[i]
        outcomes = {
            rn: batched[rn][i] if rn in batched else runner(manifest, wasm, function, data)
            for rn, runner in runners.items()
        }
        problems = []
        for rn, got in outcomes.items():
            if rn in coarse and "error" in case.get("expect", {}):
                problem = None if not got.ok else f"expected an error, got {got.describe()}"
            else:
                problem = _check(case, got)
            if problem:
                problems.append(f"{rn}: {problem}")
        names = list(outcomes)
        for other in names[1:]:
            first = outcomes[names[0]]
            if not first.same_as(outcomes[other], coarse=other in coarse or names[0] in coarse):
                problems.append(
                    f"engines disagree: {names[0]} gave {first.describe()}, "
                    f"{other} gave {outcomes[other].describe()}"
                )
        results.append(CaseResult(name, not problems, outcomes, problems))
    return results
