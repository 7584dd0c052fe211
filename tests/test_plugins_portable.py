"""Plugin host tests that run unchanged on CPython and inside Pyodide (standard library only):

    pytest tests/test_plugins_portable.py
    node tests/pyodide/run.mjs tests/test_plugins_portable.py

Signature checks, manifests, module rewriting, the deadline meter, the in-memory WASI file
system, and — where an engine exists (wasmtime on CPython, `WebAssembly` under Pyodide) — signed
plugins loaded and called end to end. Plugins come prebuilt from build/plugins/ (the CPython tests
build them); without them those tests skip.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from agent_core.plugins import ed25519, manifest, meter, wasmbin
from agent_core.plugins.kernel import kernel_wasm
from agent_core.plugins.sandbox import PluginError, host_allowed, memory_plan
from agent_core.plugins.wasi import EPERM, ESUCCESS, MemFS, WasiShim

BUILD = Path(__file__).resolve().parent.parent / "build" / "plugins"

# RFC 8032, 7.1, test 3 (two-byte message)
RFC_PUB = bytes.fromhex("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025")
RFC_MSG = bytes.fromhex("af82")
RFC_SIG = bytes.fromhex(
    "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
    "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"
)


def test_ed25519_verifies_rfc8032_and_rejects_tampering() -> None:
    assert ed25519.verify(RFC_PUB, RFC_MSG, RFC_SIG)
    assert not ed25519.verify(RFC_PUB, RFC_MSG + b"\x00", RFC_SIG)
    assert not ed25519.verify(RFC_PUB, RFC_MSG, RFC_SIG[:-1] + b"\x0b")


def test_a_signed_manifest_verifies_and_any_change_breaks_it() -> None:
    # signed on CPython: sign_manifest(raw, bytes(range(32))); verified here in pure Python
    raw = {
        "name": "demo",
        "wasm": [{"path": "demo.wasm", "hash": "ab" * 32}],
        "allowed_hosts": [],
        "signature": {
            "key": "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
            "sig": "EcN2zXYRwdNUKYC6ni7o6uJeDDkCXZLQS0I/nETPeTd19UeNgWeBdQsa4x1fSf0y"
            "etlfKWRxx+9+q2S+Dek0BA==",
        },
    }
    m = manifest.Manifest(manifest.validate(raw))
    assert m.verify() == manifest.parse_key_id(raw["signature"]["key"])
    for change in ({"allowed_hosts": ["*"]}, {"name": "demo2"}):
        tampered = manifest.Manifest(manifest.validate({**raw, **change}))
        with pytest.raises(PluginError) as exc:
            tampered.verify()
        assert exc.value.kind == "signature"


def test_policy_helpers() -> None:
    assert host_allowed("https://api.example.com/x", ["*.example.com"])
    assert not host_allowed("https://example.com.evil/", ["example.com"])
    kernel_pages, guest = memory_plan(128 * 1024 * 1024, 1)
    assert kernel_pages + sum(guest) == 2048


def test_kernel_and_meter_rewrites_keep_modules_parseable() -> None:
    k = kernel_wasm()
    capped = wasmbin.cap_limits(k, [16], 10)
    assert wasmbin.parse(capped).memories[0].maximum == 16
    metered = meter.instrument(capped)
    info = wasmbin.parse(metered)
    names = {e.name for e in info.exports}
    assert {meter.METER_TABLE, meter.METER_INTERVAL, meter.METER_COUNTER} <= names
    assert info.export_type("alloc") == wasmbin.FuncType(("i64",), ("i64",))
    assert meter.instrument(metered) == metered


def test_meter_adapts_and_expires() -> None:
    seen = []
    m = meter.Meter(seen.append)
    m.start(10_000)
    m.check()  # fast: interval doubles
    assert seen and seen[-1] == meter.INITIAL_INTERVAL * 2
    m.start(0)
    with pytest.raises(meter.MeterTimeout):
        m.check()
    assert m.expired


class _Mem:
    def __init__(self) -> None:
        self.buf = bytearray(65536)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.buf[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self.buf[offset : offset + len(data)] = data


def test_wasi_shim_keeps_files_inside_the_preopen() -> None:
    fs = MemFS(max_bytes=100)
    shim = WasiShim(fs, ["/scratch"])
    mem = _Mem()
    shim.bind(mem)

    def open_(path: str, oflags: int = 0) -> tuple[int, int]:
        mem.write(1000, path.encode())
        err = shim.path_open(3, 0, 1000, len(path.encode()), oflags, 0, 0, 0, 2000)
        return err, struct.unpack("<I", mem.read(2000, 4))[0]

    mem.write(1000, b"a")
    assert shim.path_create_directory(3, 1000, 1) == ESUCCESS
    err, fd = open_("a/../note.txt", oflags=1)  # create, with a harmless ".."
    assert err == ESUCCESS
    mem.write(100, b"hello")
    mem.write(0, struct.pack("<II", 100, 5))
    assert shim.fd_write(fd, 0, 1, 8) == ESUCCESS
    assert shim.fd_close(fd) == ESUCCESS
    err, fd = open_("note.txt")
    assert err == ESUCCESS
    mem.write(0, struct.pack("<II", 300, 64))
    assert shim.fd_read(fd, 0, 1, 8) == ESUCCESS
    assert mem.read(300, struct.unpack("<I", mem.read(8, 4))[0]) == b"hello"
    for escape in ("../x", "/etc/passwd", "a/../../x"):
        assert open_(escape)[0] == EPERM, escape
    mem.write(100, b"x" * 200)
    mem.write(0, struct.pack("<II", 100, 200))
    assert shim.fd_write(fd, 0, 1, 8) == 51  # ENOSPC: over the file system's cap


@pytest.fixture(scope="module")
def host():
    if not (BUILD / "json_fmt" / "kite-plugin.json").is_file():
        pytest.skip("plugins not built (run the CPython plugin tests first)")
    try:
        from agent_core.plugins.engine import default_engine

        engine = default_engine()
    except ImportError:
        pytest.skip("no WebAssembly engine here")
    from agent_core.plugins.plugin import PluginHost

    return PluginHost(
        trust=manifest.TrustPolicy(trusted_unsigned=frozenset({"json_fmt", "attacks"})),
        engine=engine,
    )


def test_plugins_run_on_this_runtimes_engine(host) -> None:
    from agent_core.plugins.plugin import Plugin

    plugin = Plugin.load(BUILD / "json_fmt", host)
    expected = "js" if sys.platform == "emscripten" else "wasmtime"
    assert host.engine.name == expected
    out = json.loads(plugin.call("format", json.dumps({"text": "[1,{}]", "indent": 0})))
    assert out == {"valid": True, "formatted": "[1,{}]"}
    attacks = Plugin.load(BUILD / "attacks", host)
    for function, kind in (("loop", "timeout"), ("grow", "memory"), ("trap", "trap")):
        with pytest.raises(PluginError) as exc:
            attacks.call(function)
        assert exc.value.kind == kind
    assert attacks.call("echo", b"alive") == b"alive"
