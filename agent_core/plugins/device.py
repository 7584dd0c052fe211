"""Device-run plugins: the agent on the device (the browser tab) gets the workspace's installed
plugins from the bridge and runs them itself, on its own engine.

Two bridge ops carry them (the bridge registers the handlers; host side below):

- `plugin.installed` `{}` -> `{"plugins": [{"name", "where", "manifest": {...}, "size"}],
  "errors": [{"name", "kind", "message"}], "trust": {"trusted_keys": ["ed25519:..."],
  "trusted_unsigned": [...]}, "limits": {"memory_bytes", "timeout_ms"}}` — every installed
  plugin's manifest as written (workspace `.kite/plugins/` first, then the user's plugin dir),
  and the host owner's trust list and sandbox maxima;
- `plugin.fetch` `{"name"}` -> the module's bytes as data chunks, then `{"size", "sha256"}`. The
  bridge sends only a module inside the plugin's directory whose sha256 is the one its manifest
  pins (ENOENT, EACCES otherwise).

The device does not take the bridge's word for anything it can check: it parses and validates each
manifest, decides trust itself (signature against the trusted keys, or a trusted name) *before*
downloading the module, and checks the downloaded bytes against the manifest's pinned sha256.
Trust still comes from the host owner's config (the bridge's answer) — a workspace cannot vouch
for its own plugins — unless the caller passes its own `TrustPolicy`.

`load_device_tools(client)` returns the agent `Tool`s: device-run plugins loaded here, plus the
host-run ones (`plugin.call`, remote.py). It never raises: a plugin that cannot be loaded is
reported through `on_error` and left out.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent_core.plugins.manifest import (
    MANIFEST_FILE,
    Manifest,
    TrustPolicy,
    check_hash,
    key_id,
    load_manifest,
    parse_key_id,
    validate,
)
from agent_core.plugins.plugin import Plugin, PluginHost
from agent_core.plugins.remote import Bridge, remote_tools
from agent_core.plugins.sandbox import HostLimits, PluginError
from agent_core.rpc.errors import EACCES, EINVAL, ENOENT, ETOOBIG, RpcError

OP_INSTALLED = "plugin.installed"
OP_FETCH = "plugin.fetch"
MAX_MODULE_BYTES = 64 * 1024 * 1024  # a module bigger than this is refused on both sides
LIST_TIMEOUT_S = 15.0
FETCH_TIMEOUT_S = 60.0


# -- host side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """One installed plugin directory the bridge offers to devices."""

    name: str
    where: str  # "workspace" or "user"
    path: Path


def installed_dirs(dirs: Iterable[tuple[str, Path]]) -> list[Installed]:
    """Installed plugin directories, first directory first; a name already seen is shadowed."""
    seen: set[str] = set()
    out = []
    for where, d in dirs:
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            if (sub / MANIFEST_FILE).is_file() and sub.name not in seen:
                seen.add(sub.name)
                out.append(Installed(sub.name, where, sub))
    return out


def handle_installed(
    dirs: Iterable[tuple[str, Path]], trust: TrustPolicy, limits: HostLimits
) -> dict[str, Any]:
    """The `plugin.installed` result (blocking file reads: run it in a thread)."""
    plugins, errors = [], []
    for inst in installed_dirs(dirs):
        try:
            manifest = load_manifest(inst.path)
            size = _module_path(manifest, inst.path).stat().st_size if _by_path(manifest) else 0
        except PluginError as exc:
            errors.append({"name": inst.name, "kind": exc.kind, "message": str(exc)})
            continue
        except OSError as exc:
            errors.append({"name": inst.name, "kind": "load", "message": f"{exc.strerror}"})
            continue
        plugins.append(
            {"name": manifest.name, "where": inst.where, "manifest": manifest.raw, "size": size}
        )
    return {
        "plugins": plugins,
        "errors": errors,
        "trust": {
            "trusted_keys": sorted(key_id(k) for k in trust.trusted_keys),
            "trusted_unsigned": sorted(trust.trusted_unsigned),
        },
        "limits": {"memory_bytes": limits.memory_bytes, "timeout_ms": limits.timeout_ms},
    }


def _by_path(manifest: Manifest) -> bool:
    return "path" in manifest.raw["wasm"][0]


def _module_path(manifest: Manifest, plugin_dir: Path) -> Path:
    """The module file, which must lie inside the plugin's directory (symlinks resolved): a
    manifest cannot make the bridge send `/etc/shadow` or a file elsewhere in the workspace."""
    root = plugin_dir.resolve()
    path = (root / manifest.raw["wasm"][0]["path"]).resolve()
    if root not in path.parents:
        raise PluginError(
            f"{manifest.name}: the module path leaves the plugin's directory", "invalid"
        )
    return path


def read_module(dirs: Iterable[tuple[str, Path]], name: Any) -> bytes:
    """The `plugin.fetch` body: the module of installed plugin `name`, checked against its
    manifest's pinned sha256 (blocking: run it in a thread). Raises RpcError."""
    if not isinstance(name, str) or not name:
        raise RpcError(EINVAL, "plugin.fetch needs 'name' (a string)")
    inst = next((i for i in installed_dirs(dirs) if i.name == name), None)
    if inst is None:
        raise RpcError(ENOENT, f"no installed plugin named {name!r}")
    try:
        manifest = load_manifest(inst.path)
        if not _by_path(manifest):
            data = manifest.load_wasm()  # inline: already checked
        else:
            path = _module_path(manifest, inst.path)
            if path.stat().st_size > MAX_MODULE_BYTES:
                raise RpcError(ETOOBIG, f"{name}: module over {MAX_MODULE_BYTES} bytes")
            data = path.read_bytes()
            check_hash(manifest.name, data, manifest.wasm_hash)
    except PluginError as exc:
        code = EACCES if exc.kind in ("hash", "invalid") else ENOENT
        raise RpcError(code, str(exc), kind=exc.kind) from None
    except OSError as exc:
        raise RpcError(ENOENT, f"{name}: cannot read the module: {exc.strerror}") from None
    return data


# -- device side -----------------------------------------------------------------------------


ErrorSink = Callable[[PluginError], None]

# The web app's loaded plugins, kept across reconnects: a plugin whose manifest (and the limits it
# runs under) did not change is neither downloaded nor instantiated again; one that disappeared
# or changed is closed. Key: the canonical manifest JSON and the host limits.
PluginCache = dict[str, Plugin]
_BROWSER_CACHE: PluginCache = {}


@dataclass
class DevicePlugins:
    """What `load_device_plugins` found: loaded plugins, refused ones, and the agent tools."""

    plugins: list[Plugin] = field(default_factory=list)
    errors: list[PluginError] = field(default_factory=list)
    tools: list[Any] = field(default_factory=list)  # agent_core.agent.tools.Tool


def browser_host(limits: HostLimits | None = None, trust: TrustPolicy | None = None) -> PluginHost:
    """A `PluginHost` for the runtime we are in: under Pyodide, files in memory and HTTP by
    synchronous XHR where the runtime has it (a browser worker; not Node)."""
    http = None
    if sys.platform == "emscripten":
        import js  # type: ignore[import-not-found]

        if hasattr(js, "XMLHttpRequest"):
            from agent_core.plugins.engine_js import XhrHttpClient

            http = XhrHttpClient()
    return PluginHost(
        trust=trust or TrustPolicy(),
        limits=limits or HostLimits(),
        scratch_root=None,
        http=http,
    )


def trust_from_wire(data: Any) -> TrustPolicy:
    """The host owner's trust list as the bridge sent it (a malformed key is skipped)."""
    if not isinstance(data, dict):
        return TrustPolicy()
    keys = set()
    for k in data.get("trusted_keys") or []:
        try:
            keys.add(parse_key_id(str(k)))
        except PluginError:
            continue
    names = frozenset(str(n) for n in data.get("trusted_unsigned") or [])
    return TrustPolicy(frozenset(keys), names)


def limits_from_wire(data: Any, base: HostLimits) -> HostLimits:
    """The host owner's maxima, never above the device's own."""
    if not isinstance(data, dict):
        return base
    changes = {}
    for key in ("memory_bytes", "timeout_ms"):
        v = data.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            changes[key] = min(v, getattr(base, key))
    return replace(base, **changes)


async def fetch_module(client: Bridge, name: str, expected_sha256: str) -> bytes:
    """Download a module as chunks (capped) and check it against the manifest's pinned hash."""
    parts: list[bytes] = []
    total = 0

    def on_chunk(payload: bytes, final: bool) -> None:
        nonlocal total
        total += len(payload)
        if total <= MAX_MODULE_BYTES:
            parts.append(bytes(payload))

    try:
        await client.call(  # type: ignore[call-arg]
            OP_FETCH, {"name": name}, on_chunk=on_chunk, timeout=FETCH_TIMEOUT_S
        )
    except RpcError as exc:
        kind = str(exc.details.get("kind") or "load")
        msg = f"{name}: the bridge did not send the module: {exc.message}"
        raise PluginError(msg, kind) from None
    if total > MAX_MODULE_BYTES:
        raise PluginError(f"{name}: module over {MAX_MODULE_BYTES} bytes", "too_big")
    data = b"".join(parts)
    check_hash(name, data, expected_sha256)
    return data


async def load_device_plugins(
    client: Bridge,
    *,
    host: PluginHost | None = None,
    trust: TrustPolicy | None = None,
    include_host_run: bool = True,
    cache: PluginCache | None = None,
) -> DevicePlugins:
    """Load the bridge's installed device-run plugins here; see the module doc. With `cache`,
    unchanged plugins from an earlier call are reused and the others closed."""
    out = DevicePlugins()
    try:
        listing = await client.call(OP_INSTALLED, {}, timeout=LIST_TIMEOUT_S)  # type: ignore[call-arg]
    except (RpcError, TimeoutError) as exc:
        out.errors.append(PluginError(f"cannot list the bridge's plugins: {exc}", "load"))
        listing = {}
    if host is None:
        host = browser_host()
    host.trust = trust or trust_from_wire(listing.get("trust"))
    host.limits = limits_from_wire(listing.get("limits"), host.limits)
    for err in listing.get("errors") or []:
        if isinstance(err, dict):
            kind = str(err.get("kind") or "load")
            out.errors.append(PluginError(str(err.get("message", err.get("name"))), kind))
    kept: PluginCache = {}
    for entry in listing.get("plugins") or []:
        try:
            plugin = await _load_one(client, entry, host, cache, kept)
        except PluginError as exc:
            out.errors.append(exc)
            continue
        if plugin is not None:
            out.plugins.append(plugin)
    if cache is not None:
        for key, old in list(cache.items()):
            if key not in kept:
                old.close()
        cache.clear()
        cache.update(kept)
    tools = [t for p in out.plugins for t in p.tools()]
    if include_host_run:
        try:
            tools += await remote_tools(client)
        except (RpcError, TimeoutError) as exc:
            out.errors.append(PluginError(f"cannot list host-run plugins: {exc}", "load"))
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            out.errors.append(PluginError(f"plugin tool {tool.name!r} is offered twice", "invalid"))
            continue
        seen.add(tool.name)
        out.tools.append(tool.as_agent_tool())
    return out


async def _load_one(
    client: Bridge,
    entry: Any,
    host: PluginHost,
    cache: PluginCache | None = None,
    kept: PluginCache | None = None,
) -> Plugin | None:
    if not isinstance(entry, dict):
        raise PluginError("the bridge sent a malformed plugin entry", "invalid")
    manifest = Manifest(validate(entry.get("manifest")), None)
    if manifest.run_on != "device":
        return None  # the bridge runs it (plugin.call)
    note = host.trust.check(manifest)  # before downloading anything (and for a cached one too)
    key = json.dumps(manifest.raw, sort_keys=True) + repr(host.limits)
    if cache is not None and kept is not None and key in cache:
        kept[key] = cache[key]
        return cache[key]
    if _by_path(manifest):
        data = await fetch_module(client, manifest.name, manifest.wasm_hash)
    else:
        data = manifest.load_wasm()
    if hashlib.sha256(data).hexdigest() != manifest.wasm_hash:  # belt and braces
        raise PluginError(f"{manifest.name}: module hash mismatch", "hash")
    plugin = Plugin(manifest, data, host, note)
    if kept is not None:
        kept[key] = plugin
    return plugin


async def load_device_tools(
    client: Bridge,
    *,
    host: PluginHost | None = None,
    trust: TrustPolicy | None = None,
    on_error: ErrorSink | None = None,
) -> list[Any]:
    """The agent tools of the bridge's installed plugins (device-run here, host-run through
    `plugin.call`). Never raises; each refused plugin goes to `on_error`. Without `host` (the
    web app), plugins are kept across calls (reconnects) and reused while unchanged."""
    cache = _BROWSER_CACHE if host is None else None
    try:
        found = await load_device_plugins(client, host=host, trust=trust, cache=cache)
    except Exception as exc:  # a plugin problem must never keep the agent from starting
        found = DevicePlugins(errors=[PluginError(f"plugins not loaded: {exc}", "load")])
    if on_error is not None:
        for err in found.errors:
            on_error(err)
    return found.tools


def with_tools(registry: Any, tools: Iterable[Any]) -> Any:
    """A copy of the agent's `ToolRegistry` plus plugin tools; a plugin tool never replaces a
    built-in one (a plugin named `bash` must not take over the shell tool)."""
    from agent_core.agent.tools.base import ToolRegistry

    merged = list(registry.tools.values())
    taken = {t.name for t in merged}
    merged += [t for t in tools if t.name not in taken]
    return ToolRegistry(merged)
