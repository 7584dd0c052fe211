"""Loaded plugins and the tools they give the agent.

`Plugin.load(path, host)` reads the manifest, decides trust (signature / trusted name), checks the
module's pinned sha256, applies the host's limits and instantiates it on the runtime's engine.
`Plugin.tools()` wraps each tool the manifest declares as a `PluginTool`, the object the agent
loop registers: name, description, JSON schema, `async call(args) -> str`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_core.plugins.abi import PluginInstance, PreparedModule, UserFunction
from agent_core.plugins.engine import Engine, default_engine
from agent_core.plugins.manifest import MANIFEST_FILE, Manifest, TrustPolicy, load_manifest
from agent_core.plugins.sandbox import (
    HostLimits,
    HttpClient,
    Limits,
    PluginError,
    scratch_preopens,
)


@dataclass
class PluginHost:
    """Host-wide settings every plugin is loaded with."""

    trust: TrustPolicy = field(default_factory=TrustPolicy)
    limits: HostLimits = field(default_factory=HostLimits)
    scratch_root: Path | None = None  # each plugin gets <scratch_root>/<name>
    http: HttpClient | None = None
    engine: Engine | None = None
    user_functions: Sequence[UserFunction] = ()

    def get_engine(self) -> Engine:
        if self.engine is None:
            self.engine = default_engine()
        return self.engine


class Plugin:
    """A trusted, instantiated plugin. Calls are serialised (one instance, one thread at a time)."""

    def __init__(
        self,
        manifest: Manifest,
        wasm: bytes,
        host: PluginHost,
        trust_note: str = "",
    ) -> None:
        self.manifest = manifest
        self.trust_note = trust_note
        self.host = host
        mem = manifest.memory
        self.limits = Limits.effective(
            host.limits,
            max_pages=mem.get("max_pages"),
            timeout_ms=manifest.timeout_ms,
            max_http_response_bytes=mem.get("max_http_response_bytes"),
            max_var_bytes=mem.get("max_var_bytes"),
        )
        # Files: under <scratch_root>/<name> on disk, or in memory when there is no scratch root
        # (the browser): wasi.MemFS, kept by the plugin's instance.
        self.scratch_dir = (
            None if host.scratch_root is None else Path(host.scratch_root) / manifest.name
        )
        preopens = scratch_preopens(self.scratch_dir, manifest.allowed_paths)
        self.module = PreparedModule(host.get_engine(), wasm, self.limits, host.user_functions)
        self.instance = PluginInstance(
            self.module,
            name=manifest.name,
            config=manifest.config,
            allowed_hosts=manifest.allowed_hosts,
            preopens=preopens,
            http=host.http,
        )
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path | str, host: PluginHost) -> Plugin:
        """Load the plugin at `path` (its directory or manifest file), refusing untrusted or
        tampered plugins."""
        manifest = load_manifest(Path(path))
        note = host.trust.check(manifest)
        return cls(manifest, manifest.load_wasm(), host, note)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def call(self, function: str, data: bytes | str = b"") -> bytes:
        with self._lock:
            return self.instance.call(function, data)

    def tools(self) -> list[PluginTool]:
        return [
            PluginTool(
                name=t.name,
                description=t.description,
                schema=t.input_schema,
                plugin=self,
                function=t.function,
            )
            for t in self.manifest.tools
        ]

    def close(self) -> None:
        self.instance.close()


@dataclass
class PluginTool:
    """One tool of a plugin, as the agent sees it.

    `call(args)` sends the arguments as a JSON object to the plugin function and returns its
    output as text; failures (trap, timeout, memory limit, refused network or file access,
    oversized output, the plugin's own error) raise `PluginError` with a message for the model
    and a `kind`/`code`. `run_on` is "device" (default) or "host" (the manifest asks the bridge
    to run it).
    """

    name: str
    description: str
    schema: dict[str, Any]
    plugin: Plugin
    function: str

    @property
    def run_on(self) -> str:
        return self.plugin.manifest.run_on

    def spec(self) -> Any:
        """The provider-neutral `ToolSpec` for this tool."""
        from agent_core.llm.types import ToolSpec

        return ToolSpec(self.name, self.description, self.schema)

    def call_sync(self, args: dict[str, Any]) -> str:
        data = json.dumps(args, ensure_ascii=False).encode()
        return self.plugin.call(self.function, data).decode("utf-8", "replace")

    async def call(self, args: dict[str, Any]) -> str:
        if sys.platform == "emscripten":  # no threads under Pyodide; calls are bounded anyway
            return self.call_sync(args)
        return await asyncio.to_thread(self.call_sync, args)

    def as_agent_tool(self) -> Any:
        """This tool as an `agent_core.agent.tools.Tool` for the agent loop's registry.

        A plugin failure becomes an error result the model reads (`PluginError`'s message, its
        kind in the metadata). Plugins are sandboxed, so no permission is asked; calls to one
        plugin are serialised by the plugin itself ("read" scheduling is safe).
        """
        from agent_core.agent.tools.base import Tool, ToolResult

        async def run(args: dict[str, Any], ctx: Any) -> Any:
            meta = {"plugin": self.plugin.name, "version": self.plugin.version}
            try:
                out = await self.call(args)
            except PluginError as exc:
                meta.update(kind=exc.kind, code=exc.code)
                return ToolResult(str(exc), title=self.name, metadata=meta, status="error")
            return ToolResult(out, title=self.name, metadata=meta)

        return Tool(spec=self.spec(), run=run, kind="read")


def discover(dirs: Iterable[Path]) -> list[Path]:
    """Installed plugin directories (each holds a kite-plugin.json), first directory first;
    a name found again in a later directory is skipped (the workspace shadows the user dir)."""
    seen: set[str] = set()
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            if (sub / MANIFEST_FILE).is_file() and sub.name not in seen:
                seen.add(sub.name)
                out.append(sub)
    return out


def load_all(dirs: Iterable[Path], host: PluginHost) -> tuple[list[Plugin], list[PluginError]]:
    """Load every installed plugin; a plugin that fails is reported, the others still load."""
    plugins, errors = [], []
    for path in discover(dirs):
        try:
            plugins.append(Plugin.load(path, host))
        except PluginError as exc:
            errors.append(exc)
    return plugins, errors
