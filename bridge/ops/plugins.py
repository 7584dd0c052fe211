"""`plugin.list` / `plugin.call`: Wasm plugins whose manifest asks to run on the host.

Wire format and semantics: agent_core/plugins/remote.py (the device side lives there too).
"""

from __future__ import annotations

from typing import Any

from agent_core.plugins.remote import OP_CALL, OP_LIST, handle_call, handle_list
from bridge.ops.base import OpContext, op


@op(OP_LIST, inline=True)
async def plugin_list(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    return handle_list(ctx.host_plugins)


@op(OP_CALL)
async def plugin_call(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.audit.update(plugin=args.get("plugin"), tool=args.get("tool"))
    return await handle_call(ctx.host_plugins, args)
