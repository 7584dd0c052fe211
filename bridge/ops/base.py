"""The contract between the connection layer and the op handlers.

A handler is `async def handler(ctx: OpContext, args: dict) -> dict`. It returns the `result`
object of a successful response, or raises `RpcError` (see agent_core.rpc.errors). The connection
layer owns framing, encryption, concurrency limits, cancellation (the handler's task is cancelled:
clean up in `finally`) and the audit entry; handlers only do the work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_core.rpc.errors import EINVAL, RpcError

if TYPE_CHECKING:
    from bridge.jail import Workspace
    from bridge.policy import Policy
    from bridge.snapshots import SnapshotStore

Emit = Callable[[str, Any], Awaitable[None]]
SendChunk = Callable[[bytes, bool], Awaitable[None]]


@dataclass
class OpContext:
    """What one running request may use. Built by the connection layer, one per request."""

    request_id: int
    device_id: str
    workspace: Workspace
    policy: Policy
    snapshots: SnapshotStore
    # Sends a stream event `{"id": request_id, "event": name, "data": data}` to the client.
    emit: Emit
    # Sends one binary data chunk for this request to the client; `final=True` on the last one.
    send_chunk: SendChunk
    # Yields the payloads of the binary chunks the client sends for this request, until its final.
    recv_chunks: Callable[[], AsyncIterator[bytes]]
    # Filled by the handler for the audit log: e.g. {"path": ...} or {"command": ...}, bytes moved.
    audit: dict[str, Any] = field(default_factory=dict)
    # Wasm plugins loaded on the host whose manifests ask to run there, by name.
    host_plugins: Mapping[str, Any] = field(default_factory=dict)
    # The bridge's session store (bridge.sessions.SessionStore), for the `session.*` ops.
    sessions: Any = None


Handler = Callable[[OpContext, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class OpSpec:
    name: str
    handler: Handler
    mutates: bool  # refused in read-only mode
    # Short and bounded: run in the connection's read loop, not a task of its own (saves a task
    # switch per request). Never for ops that may run long, wait on the client, or move bulk
    # data (`"binary": true` requests always get a task).
    inline: bool


REGISTRY: dict[str, OpSpec] = {}


def op(name: str, *, mutates: bool = False, inline: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler under an op name."""

    def deco(fn: Handler) -> Handler:
        if name in REGISTRY:
            raise RuntimeError(f"op {name} registered twice")
        REGISTRY[name] = OpSpec(name, fn, mutates, inline)
        return fn

    return deco


_MISSING: Any = object()


def arg_str(
    args: dict[str, Any], key: str, default: Any = _MISSING, *, allow_empty: bool = False
) -> str:
    v = args.get(key, default)
    if v is _MISSING:
        raise RpcError(EINVAL, f"missing argument '{key}'")
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, str):
        raise RpcError(EINVAL, f"argument '{key}' must be a string")
    if not allow_empty and not v:
        raise RpcError(EINVAL, f"argument '{key}' must not be empty")
    return v


def arg_int(
    args: dict[str, Any],
    key: str,
    default: Any = _MISSING,
    *,
    min_value: int | None = None,
    max_value: int | None = None,
) -> int:
    v = args.get(key, default)
    if v is _MISSING:
        raise RpcError(EINVAL, f"missing argument '{key}'")
    if v is default and default is not _MISSING:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise RpcError(EINVAL, f"argument '{key}' must be an integer")
    if min_value is not None and v < min_value:
        raise RpcError(EINVAL, f"argument '{key}' must be >= {min_value}")
    if max_value is not None and v > max_value:
        raise RpcError(EINVAL, f"argument '{key}' must be <= {max_value}")
    return v


def arg_float(
    args: dict[str, Any],
    key: str,
    default: Any = _MISSING,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
) -> float:
    v = args.get(key, default)
    if v is _MISSING:
        raise RpcError(EINVAL, f"missing argument '{key}'")
    if v is default and default is not _MISSING:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise RpcError(EINVAL, f"argument '{key}' must be a number")
    if min_value is not None and v < min_value:
        raise RpcError(EINVAL, f"argument '{key}' must be >= {min_value}")
    if max_value is not None and v > max_value:
        raise RpcError(EINVAL, f"argument '{key}' must be <= {max_value}")
    return float(v)


def arg_bool(args: dict[str, Any], key: str, default: bool = False) -> bool:
    v = args.get(key, default)
    if not isinstance(v, bool):
        raise RpcError(EINVAL, f"argument '{key}' must be true or false")
    return v
