"""`sys.*` ops: liveness and what this host offers."""

from __future__ import annotations

import time
from typing import Any

from agent_core import __version__
from bridge.ops.base import REGISTRY, OpContext, op


@op("sys.ping", inline=True)
async def ping(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True, "time": time.time(), "device": ctx.device_id}


@op("sys.info", inline=True)
async def info(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    p = ctx.policy
    return {
        "bridge": {"name": "kite-bridge", "version": __version__},
        "workspace": ctx.workspace.root.name,
        "ops": sorted([*REGISTRY, "cancel"]),
        "policy": {
            "read_only": p.read_only,
            "exec_enabled": p.exec_enabled,
            "exec_timeout_max_s": p.exec_timeout_max_s,
            "exec_output_cap_bytes": p.exec_output_cap_bytes,
            "text_max_bytes": p.text_max_bytes,
            "read_max_bytes": p.read_max_bytes,
        },
    }
