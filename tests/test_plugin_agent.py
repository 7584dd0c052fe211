"""Installed Wasm plugins are tools of the agent: a scripted model calls one through `kite run`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import tests.model_server as ms
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.plugins import sdk
from agent_core.plugins.remote import remote_tools
from agent_core.rpc.errors import RpcError
from tests.harness import BridgeProcess
from tests.plugins import built
from tests.test_client import pair
from tests.test_kite_run import kite_run
from tests.test_tools import bridge_with_key


def test_model_calls_an_installed_plugin_tool(tmp_path: Path) -> None:
    source = "def f():\n    pass  # TODO: handle errors\n"
    turns = [
        ms.Turn(tool_calls=[ms.ToolCall("todo_scan", {"text": source})]),
        ms.Turn(text="One TODO, on line 2."),
    ]
    with ms.ScriptedModelServer(turns).in_thread() as srv:
        env = {"OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-plugin-test-0123"}
        with bridge_with_key(tmp_path, env) as bk:
            sdk.install(built("todo_scan"), bk.workspace / ".kite" / "plugins")
            # The user trusts this unsigned plugin by name (what `kite plugin trust` records).
            config = bk.proc.state_dir.parent / "config" / "kite"
            config.mkdir(parents=True, exist_ok=True)
            (config / "plugin-trust.json").write_text(
                json.dumps({"trusted_keys": [], "trusted_unsigned": ["todo_scan"]})
            )
            r = kite_run(
                "--model", "openai/gpt-test", "scan for todos",
                cwd=bk.workspace, state=bk.proc.state_dir,
            )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "One TODO, on line 2.\n"
    first, second = srv.requests[0].body, srv.requests[-1].body
    assert "todo_scan" in {t["function"]["name"] for t in first["tools"]}
    result = next(m for m in second["messages"] if m["role"] == "tool")
    assert "handle errors" in result["content"] and "TODO" in result["content"]


def test_untrusted_plugin_is_not_offered(tmp_path: Path) -> None:
    turns = [ms.Turn(text="ok")]
    with ms.ScriptedModelServer(turns).in_thread() as srv:
        env = {"OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-plugin-test-0123"}
        with bridge_with_key(tmp_path, env) as bk:
            sdk.install(built("todo_scan"), bk.workspace / ".kite" / "plugins")
            r = kite_run(
                "--model", "openai/gpt-test", "hello",
                cwd=bk.workspace, state=bk.proc.state_dir,
            )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "todo_scan" not in {t["function"]["name"] for t in srv.requests[0].body["tools"]}
    assert "plugin not loaded" in r.stderr and "todo_scan" in r.stderr


def test_host_run_plugin_over_the_wire(tmp_path: Path) -> None:
    """A manifest with `"run_on": "host"` is loaded by the bridge and served by plugin.*."""

    ws = tmp_path / "ws"
    dest = sdk.install(built("todo_scan"), ws / ".kite" / "plugins")
    manifest = json.loads((dest / "kite-plugin.json").read_text())
    manifest["run_on"] = "host"  # the signature-free manifest: only the module hash is pinned
    (dest / "kite-plugin.json").write_text(json.dumps(manifest))
    config = tmp_path / "config" / "kite"
    config.mkdir(parents=True)
    (config / "plugin-trust.json").write_text(
        json.dumps({"trusted_keys": [], "trusted_unsigned": ["todo_scan"]})
    )
    bridge = BridgeProcess(
        ws, tmp_path / "state", env={"XDG_CONFIG_HOME": str(tmp_path / "config")}
    )

    async def main() -> None:
        client = await pair(bridge, CpythonCryptoBackend())
        tools = await remote_tools(client)
        assert [t.name for t in tools] == ["todo_scan"]
        out = await tools[0].call({"text": "x = 1  # FIXME: overflow\n"})
        assert "FIXME" in out and "overflow" in out
        try:
            await client.call("plugin.call", {"plugin": "nope", "tool": "x", "arguments": {}})
        except RpcError as exc:
            assert exc.code == "ENOENT"
        else:
            raise AssertionError("unknown plugin accepted")
        await client.close()

    try:
        asyncio.run(main())
    finally:
        bridge.stop()
