"""Plugins that run on the host, for an agent on the device (`"run_on": "host"` manifests).

Two bridge ops carry them (wire format in the docstrings; the bridge registers the handlers):

- `plugin.list` `{}` -> `{"plugins": [{"name", "version", "run_on", "tools": [{"name",
  "description", "input_schema"}]}]}` — what the host has loaded;
- `plugin.call` `{"plugin", "tool", "arguments": {...}}` -> `{"output": "<text>"}`; a plugin
  failure is an error response whose code follows `PluginError.code` (ETIMEDOUT, ETOOBIG,
  EACCES, ENOENT, EINVAL, or EPLUGIN for the plugin's own error, a trap or its memory limit) and
  whose `details.kind` is the `PluginError.kind`.

On the device, `remote_tools(bridge)` returns `RemotePluginTool`s: the same surface as
`PluginTool` (name, description, schema, run_on, `async call`, `spec`, `as_agent_tool`), with
failures raised as `PluginError`s of the same kind as on the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent_core.plugins.plugin import Plugin, PluginTool
from agent_core.plugins.sandbox import PluginError
from agent_core.rpc.errors import EINVAL, ENOENT, RpcError

OP_LIST = "plugin.list"
OP_CALL = "plugin.call"


class Bridge(Protocol):
    async def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]: ...


# -- host side -------------------------------------------------------------------------------


def handle_list(plugins: Mapping[str, Plugin]) -> dict[str, Any]:
    """The `plugin.list` result for the host's loaded plugins."""
    return {
        "plugins": [
            {
                "name": p.name,
                "version": p.version,
                "run_on": p.manifest.run_on,
                "tools": [
                    {"name": t.name, "description": t.description, "input_schema": t.schema}
                    for t in p.tools()
                ],
            }
            for p in plugins.values()
        ]
    }


async def handle_call(plugins: Mapping[str, Plugin], args: dict[str, Any]) -> dict[str, Any]:
    """The `plugin.call` handler body: run a tool of a loaded plugin on the host."""
    name, tool_name, arguments = args.get("plugin"), args.get("tool"), args.get("arguments", {})
    if not isinstance(name, str) or not isinstance(tool_name, str):
        raise RpcError(EINVAL, "plugin.call needs 'plugin' and 'tool' (strings)")
    if not isinstance(arguments, dict):
        raise RpcError(EINVAL, "'arguments' must be a JSON object")
    plugin = plugins.get(name)
    if plugin is None:
        raise RpcError(ENOENT, f"no plugin {name!r} is loaded on the host")
    tool = next((t for t in plugin.tools() if t.name == tool_name), None)
    if tool is None:
        raise RpcError(ENOENT, f"plugin {name!r} has no tool {tool_name!r}")
    try:
        return {"output": await tool.call(arguments)}
    except PluginError as exc:
        raise RpcError(exc.code, str(exc), kind=exc.kind) from None


# -- device side -----------------------------------------------------------------------------


@dataclass
class RemotePluginTool:
    """A host-run plugin's tool, called through the bridge."""

    name: str
    description: str
    schema: dict[str, Any]
    plugin_name: str
    bridge: Bridge
    run_on: str = "host"

    def spec(self) -> Any:
        from agent_core.llm.types import ToolSpec

        return ToolSpec(self.name, self.description, self.schema)

    async def call(self, args: dict[str, Any]) -> str:
        try:
            result = await self.bridge.call(
                OP_CALL, {"plugin": self.plugin_name, "tool": self.name, "arguments": args}
            )
        except RpcError as exc:
            raise PluginError(exc.message, str(exc.details.get("kind", "error"))) from None
        return str(result.get("output", ""))

    as_agent_tool = PluginTool.as_agent_tool

    @property
    def plugin(self) -> Any:  # what as_agent_tool reports in its metadata
        return _Named(self.plugin_name)


@dataclass(frozen=True)
class _Named:
    name: str
    version: str = ""


async def remote_tools(bridge: Bridge, only_host: bool = True) -> list[RemotePluginTool]:
    """The tools of the plugins loaded on the host (by default those marked run_on: host)."""
    listing = await bridge.call(OP_LIST, {})
    tools = []
    for p in listing.get("plugins", []):
        if only_host and p.get("run_on") != "host":
            continue
        for t in p.get("tools", []):
            tools.append(
                RemotePluginTool(
                    t["name"],
                    t.get("description", ""),
                    t.get("input_schema") or {"type": "object"},
                    p["name"],
                    bridge,
                )
            )
    return tools
