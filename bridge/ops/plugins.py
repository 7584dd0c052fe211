"""`plugin.*`: Wasm plugins for the device and plugins whose manifest asks to run on the host.

- `plugin.list` / `plugin.call`: host-run plugins (wire format: agent_core/plugins/remote.py);
- `plugin.installed` / `plugin.fetch`: the installed plugins' manifests, the host owner's trust
  list, and the modules as data chunks, for a device that runs them itself
  (wire format: agent_core/plugins/device.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent_core.plugins.device import OP_FETCH, OP_INSTALLED, handle_installed, read_module
from agent_core.plugins.remote import OP_CALL, OP_LIST, handle_call, handle_list
from agent_core.rpc.frames import MAX_CHUNK_PAYLOAD
from bridge.ops.base import OpContext, op


@op(OP_LIST, inline=True)
async def plugin_list(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    return handle_list(ctx.host_plugins)


@op(OP_CALL)
async def plugin_call(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.audit.update(plugin=args.get("plugin"), tool=args.get("tool"))
    return await handle_call(ctx.host_plugins, args)


def _dirs(ctx: OpContext) -> list[tuple[str, Path]]:
    """Where plugins are installed: the workspace's `.kite/plugins`, then the user's plugin dir
    (`<state dir>/plugins`, as `kite plugin install --user` and `load_installed` use)."""
    from bridge.cli_plugin import WORKSPACE_PLUGINS

    dirs = [("workspace", Path(ctx.workspace.root) / WORKSPACE_PLUGINS)]
    if ctx.sessions is not None:  # the session store lives at the top of the state dir
        dirs.append(("user", Path(ctx.sessions.path).parent / "plugins"))
    return dirs


@op(OP_INSTALLED)
async def plugin_installed(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    from agent_core.rpc.errors import EINVAL, RpcError
    from bridge.cli import CliError
    from bridge.cli_plugin import load_plugin_host_config

    try:
        trust, limits = load_plugin_host_config()
    except CliError as exc:  # the host owner's [plugins] config is broken: say where
        raise RpcError(EINVAL, f"plugin config: {exc}") from None
    return await asyncio.to_thread(handle_installed, _dirs(ctx), trust, limits)


@op(OP_FETCH)
async def plugin_fetch(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    import hashlib

    name = args.get("name")
    ctx.audit.update(plugin=name)
    data = await asyncio.to_thread(read_module, _dirs(ctx), name)
    view = memoryview(data)
    chunks = 0
    for off in range(0, max(len(data), 1), MAX_CHUNK_PAYLOAD):
        final = off + MAX_CHUNK_PAYLOAD >= len(data)
        await ctx.send_chunk(bytes(view[off : off + MAX_CHUNK_PAYLOAD]), final)
        chunks += 1
    ctx.audit["bytes"] = len(data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "chunks": chunks}
