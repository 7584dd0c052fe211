"""Wasm plugins: the Extism guest ABI over wasmtime (CPython) or `WebAssembly` (Pyodide).

Public API::

    from agent_core.plugins import Plugin, PluginHost, PluginTool, PluginError, TrustPolicy

    host = PluginHost(trust=TrustPolicy(trusted_keys=frozenset({key})))
    plugin = Plugin.load(".kite/plugins/todo_scan", host)
    plugin.call("scan", b'{"text": "# TODO: x"}')
    for tool in plugin.tools():
        await tool.call({"text": "..."})

Standard library only at import time; the wasmtime engine is imported when first used.
See docs/plugins.md.
"""

from agent_core.plugins.abi import HostContext, PluginInstance, PreparedModule, UserFunction
from agent_core.plugins.manifest import Manifest, TrustPolicy, load_manifest, parse_manifest
from agent_core.plugins.plugin import Plugin, PluginHost, PluginTool, discover, load_all
from agent_core.plugins.sandbox import HostLimits, Limits, PluginError

__all__ = [
    "HostContext",
    "HostLimits",
    "Limits",
    "Manifest",
    "Plugin",
    "PluginError",
    "PluginHost",
    "PluginInstance",
    "PluginTool",
    "PreparedModule",
    "TrustPolicy",
    "UserFunction",
    "discover",
    "load_all",
    "load_manifest",
    "parse_manifest",
]
