"""The tool contract: a schema for the model, an async `run` over the bridge, scheduling facts.

A tool's `run(args, ctx)` gets validated, alias-resolved arguments and a `ToolContext` (the
bridge, the session, the permission gate, an event sink). It returns a `ToolResult` or raises
`ToolError`; permission and bridge errors are turned into results by `execute`, so the model
always gets an answer it can act on.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agent_core.agent.permissions import (
    PermissionDenied,
    PermissionGate,
    PermissionRefused,
    PermissionRejected,
    PermissionRequest,
)
from agent_core.agent.session import Session
from agent_core.llm.types import ToolSpec
from agent_core.rpc.errors import RpcError

if TYPE_CHECKING:
    from agent_core.agent.events import AgentEvent

OnEvent = Callable[[str, Any], Any]


class Bridge(Protocol):
    """What tools need from a bridge connection (`agent_core.client.KiteClient` is one)."""

    async def call(
        self, op: str, args: dict[str, Any] | None = None, *, on_event: OnEvent | None = None
    ) -> dict[str, Any]: ...


Status = Literal["ok", "error", "denied", "refused", "rejected", "aborted", "skipped"]


@dataclass
class ToolResult:
    output: str  # full text for the model (the loop truncates it and keeps the full one)
    title: str = ""  # one line for a UI
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. diff, exit_code
    status: Status = "ok"

    @property
    def is_error(self) -> bool:
        return self.status != "ok"


class ToolError(Exception):
    """A failure the model should read and react to (bad input, file changed, ...)."""


QuestionsFn = Callable[[list[dict[str, Any]]], Awaitable[list[str] | None]]
EmitFn = Callable[["AgentEvent"], Awaitable[None]]


@dataclass
class ToolContext:
    bridge: Bridge
    session: Session
    gate: PermissionGate
    call_id: str
    tool: str
    emit: EmitFn
    ask_user: QuestionsFn | None = None

    async def ask(
        self,
        permission: str,
        patterns: list[str],
        title: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Check the permission rules; may prompt the user. Raises on deny/refuse/reject."""
        await self.gate.check(
            PermissionRequest(
                permission, patterns, self.tool, self.call_id, title, dict(metadata or {})
            )
        )


RunFn = Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]
Kind = Literal["read", "write", "exclusive"]


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    run: RunFn
    # Scheduling: "read" calls run in parallel; "write" calls run in parallel with calls on other
    # paths; "exclusive" calls (bash, apply_patch, question, ...) run alone.
    kind: Kind = "read"
    path_args: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)  # other names models use for an arg
    offered: bool = True  # offered to models (diff/undo serve the local router and UIs)

    @property
    def name(self) -> str:
        return self.spec.name


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), name)


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _check(value: Any, schema: dict[str, Any], where: str) -> str | None:
    want = schema.get("type")
    if isinstance(want, str) and want in _TYPES:
        ok = isinstance(value, _TYPES[want])
        if want in ("integer", "number") and isinstance(value, bool):
            ok = False
        if want == "integer" and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            return f"{where} must be of type {want}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {', '.join(map(str, schema['enum']))}"
    if isinstance(value, (int, float)) and "minimum" in schema and value < schema["minimum"]:
        return f"{where} must be >= {schema['minimum']}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            err = _check(item, schema["items"], f"{where}[{i}]")
            if err:
                return err
    if isinstance(value, dict) and schema.get("type") == "object":
        return _check_object(value, schema, where)
    return None


def _check_object(value: dict[str, Any], schema: dict[str, Any], where: str) -> str | None:
    props: dict[str, Any] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value or value[key] is None:
            return f"missing required argument {where + '.' if where else ''}{key}"
    for key, item in value.items():
        if key not in props:  # lenient: extra arguments are ignored
            continue
        if item is None and key not in schema.get("required", []):
            continue
        err = _check(item, props[key], f"{where + '.' if where else ''}{key}")
        if err:
            return err
    return None


class ToolRegistry:
    """The tools the loop may call, by name."""

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = {t.name: t for t in tools}

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self.tools.values() if t.offered]

    def prepare(self, name: str, args: Any) -> tuple[dict[str, Any], str | None]:
        """Resolve argument aliases and check the schema: (arguments, error or None)."""
        tool = self.tools.get(name)
        if tool is None:
            offered = ", ".join(t.name for t in self.tools.values() if t.offered)
            return {}, f"unknown tool {name!r}; available tools: {offered}"
        if not isinstance(args, dict):
            return {}, f"the arguments of {name} must be a JSON object"
        props = tool.spec.parameters.get("properties", {})
        out: dict[str, Any] = {}
        for key, value in args.items():
            k = key if key in props else tool.aliases.get(key) or _snake(key)
            if k not in props:
                k = key
            out.setdefault(k, value)
        # Unknown arguments are dropped; an explicit null means "not given".
        out = {k: v for k, v in out.items() if k in props and v is not None}
        err = _check_object(out, tool.spec.parameters, "")
        if err:
            return out, f"invalid arguments for {name}: {err}"
        for key, value in list(out.items()):  # 3.0 -> 3 where an integer is wanted
            if props.get(key, {}).get("type") == "integer" and isinstance(value, float):
                out[key] = int(value)
        return out, None

    def paths(self, name: str, args: dict[str, Any]) -> list[str]:
        tool = self.tools.get(name)
        if tool is None:
            return []
        out = []
        for key in tool.path_args:
            v = args.get(key)
            out.append(norm_path(v) if isinstance(v, str) else ".")
        return out


def norm_path(path: str) -> str:
    """Workspace-relative, `/`-separated, no `./`, no trailing `/`; `.` is the root."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if path.startswith("/"):
        return "/" + "/".join(parts)  # the bridge refuses it, with a clear error
    return "/".join(parts) or "."


# -- errors -----------------------------------------------------------------------------------

_HINTS = {
    "EACCES": "the host refuses this (outside the workspace, a protected path, read-only mode or "
    "commands disabled by the host's policy); paths are relative to the workspace root; do not "
    "retry the same call",
    "ENOENT": "no such file or directory",
    "EISDIR": "that is a directory",
    "ENOTDIR": "that is not a directory",
    "ETOOBIG": "too large; use a smaller range",
    "ETIMEDOUT": "timed out",
    "ECANCELED": "cancelled",
    "EBUSY": "the bridge is busy; try again",
}


def bridge_error(exc: RpcError, what: str) -> ToolError:
    hint = _HINTS.get(exc.code)
    msg = f"{what}: {exc.message or exc.code} ({exc.code})"
    if hint and hint not in msg:
        msg += f" — {hint}"
    return ToolError(msg)


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def execute(tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    """Run a tool and turn every expected failure into a result the model can read."""
    try:
        return await tool.run(args, ctx)
    except ToolError as exc:
        return ToolResult(str(exc), title=tool.name, status="error")
    except PermissionDenied as exc:
        return ToolResult(str(exc), title=tool.name, status="denied")
    except PermissionRefused as exc:
        return ToolResult(str(exc), title=tool.name, status="refused")
    except PermissionRejected as exc:
        return ToolResult(
            str(exc), title=tool.name, status="rejected", metadata={"feedback": exc.feedback}
        )
    except RpcError as exc:
        return ToolResult(str(bridge_error(exc, tool.name)), title=tool.name, status="error")
    except ConnectionError as exc:  # the channel to the bridge is gone
        return ToolResult(f"{tool.name}: bridge connection lost: {exc}", status="error")
    except Exception as exc:  # a bug in a tool must not kill the session
        return ToolResult(
            f"{tool.name}: internal error: {type(exc).__name__}: {exc}", status="error"
        )
