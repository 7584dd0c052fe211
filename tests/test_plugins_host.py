"""The plugin host's parts: the kernel, the module rewriter, manifests, signatures and trust."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent_core.plugins import ed25519, kernel, manifest, wasmbin
from agent_core.plugins.manifest import TrustPolicy, key_id, load_manifest, sign_manifest
from agent_core.plugins.plugin import Plugin, PluginHost, PluginTool, load_all
from agent_core.plugins.sandbox import (
    MIB,
    HostLimits,
    Limits,
    PluginError,
    host_allowed,
    memory_plan,
    scratch_preopens,
)
from tests.plugins import built

wasmtime = pytest.importorskip("wasmtime")


# -- the kernel ------------------------------------------------------------------------------


def test_shipped_kernel_is_exactly_what_its_source_compiles_to() -> None:
    assert kernel.kernel_wasm() == kernel.build_kernel(), (
        "kernel.wasm is stale: run `python -m agent_core.plugins.kernel`"
    )


@pytest.fixture
def k():
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, kernel.kernel_wasm()), [])
    ex = inst.exports(store)

    class K:
        def __getattr__(self, name):
            f = ex[name]
            return lambda *a: f(store, *a)

        def root(self):
            return kernel.ROOT.unpack(ex["memory"].read(store, kernel.ROOT_OFFSET, 64))

        def header(self, handle):
            return kernel.HEADER.unpack(ex["memory"].read(store, handle - 16, handle))

    return K()


def test_kernel_layout_matches_the_host_constants(k) -> None:
    k.reset()
    assert k.root() == (kernel.HEAP, 0, 0, 0, 0, 0, 0)
    a = k.alloc(10)
    assert a == kernel.FIRST_HANDLE
    assert k.header(a) == (kernel.block_capacity(10), 10)
    b = k.alloc(3)
    assert b == a + 16 + 16
    assert k.root()[0] == b + 8
    k.input_set(a, 10)
    k.output_set(b, 3)
    k.error_set(b)
    assert k.root()[1:6] == (a, 10, b, 3, b)
    k.reset()
    assert k.root() == (kernel.HEAP, 0, 0, 0, 0, 0, 0)


def test_kernel_lengths_and_free_reuse(k) -> None:
    k.reset()
    assert k.alloc(0) == 0
    a, b, c = k.alloc(100), k.alloc(200), k.alloc(5)
    assert (k.length(a), k.length(b), k.length(c)) == (100, 200, 5)
    assert k.length(a + 8) == 0 and k.length(0) == 0 and k.length(10**12) == 0
    k.free(b)
    assert k.length(b) == 0 and k.length_unsafe(b) == 0
    d = k.alloc(50)  # first fit in b's block, the rest split off as a free block
    assert d == b and k.length(d) == 50
    e = k.alloc(100)  # fits in the split-off tail
    assert b < e < c and k.length(e) == 100
    k.free(c)  # the last block: the heap shrinks
    assert k.alloc(5) == c
    k.free(a)
    k.free(a)  # double free is harmless
    assert k.length(a) == 0


def test_kernel_bounds_are_checked(k) -> None:
    k.reset()
    size = k.memory_bytes()
    assert k.load_u8(size) == 0 and k.load_u64(size - 4) == 0 and k.load_u64(2**63) == 0
    k.store_u64(size - 4, 1)  # dropped, no trap
    k.store_u8(2**40, 1)
    a = k.alloc(4)
    k.input_set(a, 4)
    assert k.input_load_u8(4) == 0 and k.input_load_u64(0) == 0
    k.output_set(a, 10**9)  # outside the heap: ignored
    assert k.output_length() == 0
    k.error_set(12345678)
    assert k.error_get() == 0


def test_kernel_grows_its_memory_and_fails_cleanly_at_its_maximum() -> None:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    capped = wasmbin.cap_limits(kernel.kernel_wasm(), [4], 10)
    ex = wasmtime.Instance(store, wasmtime.Module(engine, capped), []).exports(store)
    big = ex["alloc"](store, 100_000)
    assert big and ex["length"](store, big) == 100_000
    assert ex["alloc"](store, 200_000) == 0  # 4 pages = 256 KiB
    assert ex["memory"].size(store) <= 4


# -- module rewriting --------------------------------------------------------------------------


def test_cap_limits_rewrites_memory_and_table_maxima() -> None:
    wat = (
        '(module (memory (export "m") 2) (table 1 funcref)'
        ' (func (export "f") (result i32) i32.const 0))'
    )
    data = bytes(wasmtime.wat2wasm(wat))
    out = wasmbin.cap_limits(data, [10], 5)
    info = wasmbin.parse(out)
    assert [(m.minimum, m.maximum) for m in info.memories] == [(2, 10)]
    assert [(t.minimum, t.maximum) for t in info.tables] == [(1, 5)]
    assert info.export_type("f") == wasmbin.FuncType((), ("i32",))
    wasmtime.Module(wasmtime.Engine(), out)  # still valid
    # a declared smaller maximum is kept; a larger one is lowered
    small = bytes(wasmtime.wat2wasm("(module (memory 1 3))"))
    assert wasmbin.parse(wasmbin.cap_limits(small, [10], 5)).memories[0].maximum == 3
    with pytest.raises(wasmbin.WasmFormatError, match="at start"):
        wasmbin.cap_limits(bytes(wasmtime.wat2wasm("(module (memory 20))")), [10], 5)


def test_parse_refuses_garbage() -> None:
    for bad in (b"", b"\x00asm\x02\x00\x00\x00", b"\x00asm\x01\x00\x00\x00\x01\xff"):
        with pytest.raises(wasmbin.WasmFormatError):
            wasmbin.parse(bad)


def test_memory_plan_never_exceeds_the_budget() -> None:
    for total_mib in (1, 2, 16, 128, 1000):
        for n in (0, 1, 2, 3):
            kernel_pages, guest = memory_plan(total_mib * MIB, n)
            assert kernel_pages + sum(guest) <= total_mib * 16
            assert len(guest) == n and all(g > 0 for g in guest)
    assert memory_plan(128 * MIB, 1) == (512, [1536])


# -- policy helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/x", True),
        ("http://example.com:8080/", True),
        ("https://EXAMPLE.com/", True),
        ("https://evil.com/", False),
        ("https://example.com.evil.com/", False),
        ("https://evil.com/?https://example.com", False),
        ("https://example.com@evil.com/", False),
        ("ftp://example.com/", False),
        ("file:///etc/passwd", False),
        ("http://[::1]/", False),
        ("http://example.com:bad/", False),
    ],
)
def test_host_allowlist(url: str, allowed: bool) -> None:
    assert host_allowed(url, ["example.com", "*.example.com"]) is allowed
    assert host_allowed(url, []) is False
    assert host_allowed(url, None) is False


def test_scratch_preopens_stay_inside(tmp_path: Path) -> None:
    assert scratch_preopens(tmp_path, {".": "/scratch", "data": "/data"}) == [
        (str(tmp_path.resolve()), "/scratch"),
        (str((tmp_path / "data").resolve()), "/data"),
    ]
    for bad in ("/etc", "..", "a/../../b"):
        with pytest.raises(PluginError, match="scratch directory") as exc:
            scratch_preopens(tmp_path, {bad: "/x"})
        assert exc.value.kind == "forbidden"
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(PluginError, match="leaves the scratch"):
        scratch_preopens(tmp_path, {"link": "/x"})


def test_limits_take_the_stricter_of_manifest_and_host() -> None:
    host = HostLimits(memory_bytes=64 * MIB, timeout_ms=1000)
    lim = Limits.effective(host, max_pages=100_000, timeout_ms=50)
    assert lim.memory_bytes == 64 * MIB and lim.timeout_ms == 50
    lim = Limits.effective(host, max_pages=16, timeout_ms=99_999)
    assert lim.memory_bytes == MIB and lim.timeout_ms == 1000


# -- signatures --------------------------------------------------------------------------------


def test_pure_python_ed25519_matches_cryptography_and_rfc8032() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    # RFC 8032, 7.1, tests 1 and 2
    vectors = [
        (
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
            "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e"
            "458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ]
    for pub, msg, sig in vectors:
        assert ed25519.verify(bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig))
    for i in range(8):
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes_raw()
        msg = os.urandom(i * 13)
        sig = key.sign(msg)
        assert ed25519.verify(pub, msg, sig)
        assert not ed25519.verify(pub, msg + b"!", sig)
        flipped = bytearray(sig)
        flipped[i] ^= 0x40
        assert not ed25519.verify(pub, msg, bytes(flipped))
        # S + L: same signature value mod L, but non-canonical: must be refused
        s = int.from_bytes(sig[32:], "little") + ed25519.L
        if s < 2**256:
            assert not ed25519.verify(pub, msg, sig[:32] + s.to_bytes(32, "little"))
    assert not ed25519.verify(b"\xff" * 32, b"", b"\x00" * 64)
    assert not ed25519.verify(b"short", b"", b"\x00" * 64)


def test_manifest_modules_import_only_the_stdlib() -> None:
    code = (
        "import sys, agent_core.plugins, agent_core.plugins.sdk, agent_core.plugins.manifest\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('wasmtime', 'cryptography', "
        "'extism', 'rich', 'websockets')]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def signed_plugin(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """todo_scan copied and signed with a fresh key: (dir, public key, private seed)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    src = built("todo_scan")
    dest = tmp_path / "todo_scan"
    shutil.copytree(src, dest)
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    raw = json.loads((dest / "kite-plugin.json").read_text())
    (dest / "kite-plugin.json").write_text(json.dumps(sign_manifest(raw, seed)))
    return dest, key.public_key().public_bytes_raw(), seed


def _host(tmp_path: Path, **trust) -> PluginHost:
    return PluginHost(trust=TrustPolicy(**trust), scratch_root=tmp_path / "scratch")


def test_signed_plugin_loads_with_its_key_trusted(tmp_path, signed_plugin) -> None:
    path, pub, _ = signed_plugin
    plugin = Plugin.load(path, _host(tmp_path, trusted_keys=frozenset({pub})))
    assert plugin.trust_note.startswith("signed by trusted key ed25519:")
    out = json.loads(plugin.call("scan", json.dumps({"text": "TODO: x"})))
    assert out["count"] == 1


def test_wrong_hash_is_refused(tmp_path, signed_plugin) -> None:
    path, pub, _ = signed_plugin
    wasm = path / "todo_scan.wasm"
    wasm.write_bytes(wasm.read_bytes() + b"\x00")  # a tampered module (still has a valid header)
    with pytest.raises(PluginError, match="sha256") as exc:
        Plugin.load(path, _host(tmp_path, trusted_keys=frozenset({pub})))
    assert exc.value.kind == "hash" and exc.value.code == "EACCES"


def test_bad_signature_is_refused_even_for_a_trusted_name(tmp_path, signed_plugin) -> None:
    path, pub, _ = signed_plugin
    raw = json.loads((path / "kite-plugin.json").read_text())
    raw["allowed_hosts"] = ["*"]  # widen the sandbox after signing
    (path / "kite-plugin.json").write_text(json.dumps(raw))
    for trust in (
        {"trusted_keys": frozenset({pub})},
        {"trusted_unsigned": frozenset({"todo_scan"})},
    ):
        with pytest.raises(PluginError, match="signature does not match") as exc:
            Plugin.load(path, _host(tmp_path, **trust))
        assert exc.value.kind == "signature"


def test_signature_by_an_unknown_key_is_refused(tmp_path, signed_plugin) -> None:
    path, _, _ = signed_plugin
    with pytest.raises(PluginError, match="not a trusted publisher key") as exc:
        Plugin.load(path, _host(tmp_path, trusted_keys=frozenset({b"\x01" * 32})))
    assert exc.value.kind == "untrusted"


def test_unsigned_plugin_needs_trust_by_name(tmp_path) -> None:
    path = built("json_fmt")
    with pytest.raises(PluginError, match="unsigned and not trusted") as exc:
        Plugin.load(path, _host(tmp_path))
    assert exc.value.kind == "untrusted"
    plugin = Plugin.load(path, _host(tmp_path, trusted_unsigned=frozenset({"json_fmt"})))
    assert plugin.trust_note == "trusted by name (unsigned)"


def test_manifest_validation_refuses_typos_and_bad_values() -> None:
    good = {"name": "x", "wasm": [{"path": "x.wasm", "hash": "a" * 64}]}
    manifest.validate(dict(good))
    bad = [
        {**good, "alowed_hosts": ["a"]},
        {**good, "name": "Bad Name"},
        {**good, "wasm": [{"path": "x.wasm"}]},
        {**good, "wasm": [{"path": "x.wasm", "hash": "xyz"}]},
        {**good, "wasm": []},
        {**good, "timeout_ms": 0},
        {**good, "memory": {"max_pages": -1}},
        {**good, "memory": {"pages": 1}},
        {**good, "allowed_paths": ["."]},
        {**good, "run_on": "cloud"},
        {**good, "tools": [{"name": "t"}, {"name": "t"}]},
        {**good, "tools": [{"name": "t", "input_schema": {"type": "string"}}]},
        {**good, "signature": {"key": "k"}},
    ]
    for raw in bad:
        with pytest.raises(PluginError) as exc:
            manifest.validate(raw)
        assert exc.value.kind == "invalid", raw


def test_extism_manifest_drops_kite_fields() -> None:
    m = load_manifest(built("attacks"))
    ext = m.to_extism()
    assert set(ext) <= set(manifest.EXTISM_FIELDS)
    assert ext["allowed_hosts"] == ["127.0.0.1"] and ext["timeout_ms"] == 300


def test_key_ids_round_trip() -> None:
    pub = hashlib.sha256(b"k").digest()
    assert manifest.parse_key_id(key_id(pub)) == pub
    assert manifest.parse_key_id(base64.b64encode(pub).decode()) == pub
    with pytest.raises(PluginError):
        manifest.parse_key_id("ed25519:abc")


# -- plugins as agent tools ------------------------------------------------------------------


def test_plugin_tools_for_the_agent(tmp_path) -> None:
    asyncio.run(_tools_for_the_agent(tmp_path))


async def _tools_for_the_agent(tmp_path: Path) -> None:
    plugins, errors = load_all(
        [tmp_path / "missing", built("json_fmt").parent],
        _host(tmp_path, trusted_unsigned=frozenset({"json_fmt", "todo_scan"})),
    )
    assert {p.name for p in plugins} >= {"json_fmt", "todo_scan"}
    tools = {t.name: t for p in plugins for t in p.tools()}
    fmt = tools["json_format"]
    assert isinstance(fmt, PluginTool) and fmt.run_on == "device"
    assert fmt.schema["required"] == ["text"]
    assert fmt.spec().name == "json_format"
    out = json.loads(await fmt.call({"text": "[1,2]", "indent": 0}))
    assert out == {"valid": True, "formatted": "[1,2]"}
    with pytest.raises(PluginError, match="expected arguments"):
        await tools["todo_scan"].call({"txt": 1})
    # the untrusted ones (attacks, echo) are reported, not loaded
    assert {e.kind for e in errors} == {"untrusted"}
    # as a tool of the agent loop
    from agent_core.agent.tools import ToolRegistry, execute

    registry = ToolRegistry([t.as_agent_tool() for t in tools.values()])
    args, err = registry.prepare("json_format", {"text": "{}"})
    assert err is None
    result = await execute(registry.get("json_format"), args, None)
    assert result.status == "ok" and json.loads(result.output)["valid"] is True
    result = await execute(registry.get("json_format"), {"text": "[]", "indent": 99}, None)
    assert result.status == "error" and result.metadata["kind"] == "error"
    assert "indent" in result.output


def test_host_run_plugins_through_the_bridge_ops(tmp_path) -> None:
    from agent_core.plugins import remote
    from agent_core.rpc.errors import RpcError

    src = built("json_fmt")
    dest = tmp_path / "json_fmt"
    shutil.copytree(src, dest)
    raw = json.loads((dest / "kite-plugin.json").read_text())
    raw["run_on"] = "host"
    (dest / "kite-plugin.json").write_text(json.dumps(raw))
    plugin = Plugin.load(dest, _host(tmp_path, trusted_unsigned=frozenset({"json_fmt"})))
    loaded = {plugin.name: plugin}

    class FakeBridge:  # what the bridge's op handlers would do, minus the wire
        async def call(self, op, args=None):
            if op == remote.OP_LIST:
                return remote.handle_list(loaded)
            try:
                return await remote.handle_call(loaded, args)
            except RpcError as exc:  # as it arrives on the device
                raise RpcError.from_wire(exc.to_wire()) from None

    async def scenario() -> None:
        tools = {t.name: t for t in await remote.remote_tools(FakeBridge())}
        assert set(tools) == {"json_format", "json_validate"}
        fmt = tools["json_format"]
        assert fmt.run_on == "host" and fmt.schema["required"] == ["text"]
        assert json.loads(await fmt.call({"text": "[]"})) == {"valid": True, "formatted": "[]"}
        with pytest.raises(PluginError, match="indent") as exc:
            await fmt.call({"text": "[]", "indent": 99})
        assert exc.value.kind == "error"
        result = await fmt.as_agent_tool().run({"text": "{"}, None)
        assert result.status == "ok" and json.loads(result.output)["valid"] is False
        with pytest.raises(RpcError) as err:
            await remote.handle_call(loaded, {"plugin": "nope", "tool": "x"})
        assert err.value.code == "ENOENT"

    asyncio.run(scenario())
