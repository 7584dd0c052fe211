"""Device-run plugins over the wire: `plugin.installed` + `plugin.fetch` from a real bridge, the
device deciding trust and checking the module itself (agent_core/plugins/device.py), on CPython.
The same code runs in Chromium in tests/e2e/test_web_plugins.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.plugins import sdk
from agent_core.plugins.device import (
    fetch_module,
    load_device_plugins,
    load_device_tools,
    with_tools,
)
from agent_core.plugins.manifest import key_id, sign_manifest
from agent_core.plugins.plugin import PluginHost
from agent_core.plugins.sandbox import PluginError
from agent_core.rpc.errors import RpcError
from tests.harness import BridgeProcess
from tests.plugins import built
from tests.test_client import pair

pytest.importorskip("wasmtime")


def _seed() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


def _edit(dest: Path, **changes: Any) -> dict[str, Any]:
    path = dest / "kite-plugin.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))
    return raw


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A bridge whose workspace has: todo_scan (trusted by name), json_fmt (signed by a trusted
    key), echo (unsigned, untrusted), and in the user's plugin dir `attacks` (trusted by name,
    module tampered after install)."""
    ws = tmp_path / "ws"
    plugins = ws / ".kite" / "plugins"
    state = tmp_path / "state"
    sdk.install(built("todo_scan"), plugins)
    seed, public = _seed()
    dest = sdk.install(built("json_fmt"), plugins)
    raw = json.loads((dest / "kite-plugin.json").read_text())
    (dest / "kite-plugin.json").write_text(json.dumps(sign_manifest(raw, seed)))
    sdk.install(built("echo"), plugins)
    bad = sdk.install(built("attacks"), state / "plugins")
    wasm = bad / "attacks.wasm"
    wasm.write_bytes(wasm.read_bytes() + b"\0")  # a custom-section-sized change: new hash
    config = tmp_path / "config" / "kite"
    config.mkdir(parents=True)
    (config / "plugin-trust.json").write_text(
        json.dumps({"trusted_keys": [key_id(public)], "trusted_unsigned": ["todo_scan", "attacks"]})
    )
    proc = BridgeProcess(ws, state, env={"XDG_CONFIG_HOME": str(tmp_path / "config")})
    try:
        yield {"bridge": proc, "plugins": plugins, "public": public, "tmp": tmp_path}
    finally:
        proc.stop()


def _host(tmp: Path) -> PluginHost:
    return PluginHost(scratch_root=tmp / "device-scratch")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_device_loads_trusted_plugins_and_refuses_the_rest(setup: dict[str, Any]) -> None:
    async def main() -> None:
        client = await pair(setup["bridge"], CpythonCryptoBackend())
        try:
            listing = await client.call("plugin.installed", {})
            names = sorted(p["name"] for p in listing["plugins"])
            assert names == ["attacks", "echo", "json_fmt", "todo_scan"]
            where = {p["name"]: p["where"] for p in listing["plugins"]}
            assert where["attacks"] == "user" and where["todo_scan"] == "workspace"
            assert listing["trust"]["trusted_keys"] == [key_id(setup["public"])]

            found = await load_device_plugins(client, host=_host(setup["tmp"]))
            assert sorted(p.name for p in found.plugins) == ["json_fmt", "todo_scan"]
            kinds = sorted(e.kind for e in found.errors)
            assert kinds == ["hash", "untrusted"], [str(e) for e in found.errors]
            untrusted = next(e for e in found.errors if e.kind == "untrusted")
            assert "echo" in str(untrusted)
            notes = {p.name: p.trust_note for p in found.plugins}
            assert notes["json_fmt"].startswith("signed by trusted key")
            tools = {t.name: t for t in found.tools}
            assert {"todo_scan", "json_format"} <= set(tools)
            result = await tools["todo_scan"].run({"text": "x = 1  # FIXME: overflow\n"}, None)
            assert result.status == "ok" and "overflow" in result.output
        finally:
            await client.close()

    run(main())


def test_device_checks_the_module_hash_itself(setup: dict[str, Any]) -> None:
    async def main() -> None:
        client = await pair(setup["bridge"], CpythonCryptoBackend())
        try:
            listing = await client.call("plugin.installed", {})
            todo = next(p for p in listing["plugins"] if p["name"] == "todo_scan")
            pinned = todo["manifest"]["wasm"][0]["hash"]
            data = await fetch_module(client, "todo_scan", pinned)
            assert len(data) == todo["size"] > 1000
            with pytest.raises(PluginError) as err:  # a module that is not the pinned one
                await fetch_module(client, "todo_scan", "0" * 64)
            assert err.value.kind == "hash"
            with pytest.raises(RpcError) as rpc:
                await client.call("plugin.fetch", {"name": "nope"})
            assert rpc.value.code == "ENOENT"
            with pytest.raises(RpcError) as rpc:  # tampered after install: the bridge refuses
                await client.call("plugin.fetch", {"name": "attacks"})
            assert rpc.value.code == "EACCES" and rpc.value.details["kind"] == "hash"
        finally:
            await client.close()

    run(main())


def test_signature_and_paths_are_checked(setup: dict[str, Any]) -> None:
    """A signed manifest widened after signing is refused on the device; a module path that
    leaves the plugin's directory is never read by the bridge."""
    plugins: Path = setup["plugins"]
    _edit(plugins / "json_fmt", allowed_hosts=["*"])
    secret = setup["tmp"] / "ws" / "secret.bin"
    secret.write_bytes(b"not for devices")
    _edit(plugins / "echo", wasm=[{"path": "../../secret.bin", "hash": "1" * 64}])

    async def main() -> None:
        client = await pair(setup["bridge"], CpythonCryptoBackend())
        try:
            found = await load_device_plugins(client, host=_host(setup["tmp"]))
            errors = {e.kind: str(e) for e in found.errors}
            assert [p.name for p in found.plugins] == ["todo_scan"]
            assert "signature" in errors and "json_fmt" in errors["signature"]
            with pytest.raises(RpcError) as rpc:
                await client.call("plugin.fetch", {"name": "echo"})
            assert rpc.value.code == "EACCES" and "leaves the plugin's directory" in str(rpc.value)
            listing = await client.call("plugin.installed", {})
            assert any(e["name"] == "echo" for e in listing["errors"])
        finally:
            await client.close()

    run(main())


def test_load_device_tools_never_raises_and_keeps_builtins(setup: dict[str, Any]) -> None:
    from agent_core.agent.tools import default_registry

    async def main() -> None:
        client = await pair(setup["bridge"], CpythonCryptoBackend())
        errors: list[PluginError] = []
        try:
            tools = await load_device_tools(
                client, host=_host(setup["tmp"]), on_error=errors.append
            )
        finally:
            await client.close()
        assert sorted(t.name for t in tools) == ["json_format", "json_validate", "todo_scan"]
        assert len(errors) == 2
        base = default_registry()
        merged = with_tools(base, tools)
        assert set(merged.tools) == set(base.tools) | {"json_format", "json_validate", "todo_scan"}
        # A closed channel: no tools, one clear error, no exception.
        errors.clear()
        assert await load_device_tools(client, on_error=errors.append) == []
        assert errors and errors[0].kind == "load"

    run(main())


def test_a_cache_reuses_unchanged_plugins_and_closes_removed_ones(setup: dict[str, Any]) -> None:
    """What the web app does on a reconnect: no second download for an unchanged plugin."""
    import shutil

    async def main() -> None:
        cache: dict[str, Any] = {}
        host = _host(setup["tmp"])
        client = await pair(setup["bridge"], CpythonCryptoBackend())
        try:
            first = await load_device_plugins(client, host=host, cache=cache)
            again = await load_device_plugins(client, host=host, cache=cache)
            by_name = {p.name: p for p in first.plugins}
            assert {p.name: p for p in again.plugins} == by_name  # the same objects
            assert len(cache) == 2
            # json_fmt is uninstalled: its instance is closed; todo_scan is kept as it was.
            shutil.rmtree(setup["plugins"] / "json_fmt")
            third = await load_device_plugins(client, host=host, cache=cache)
            assert [p.name for p in third.plugins] == ["todo_scan"]
            assert third.plugins[0] is by_name["todo_scan"]
            assert by_name["json_fmt"].instance._inst is None  # closed
            assert by_name["todo_scan"].instance._inst is not None
            out = await third.tools[0].run({"text": "# TODO: still\n"}, None)
            assert "still" in out.output
        finally:
            await client.close()

    run(main())
