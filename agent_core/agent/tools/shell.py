"""`bash`: run a shell command on the host through the bridge, streaming its output."""

from __future__ import annotations

from typing import Any

from agent_core.agent.events import ToolOutput
from agent_core.agent.permissions import bash_subjects
from agent_core.agent.tools.base import Tool, ToolContext, ToolError, ToolResult, bridge_error
from agent_core.llm.types import ToolSpec
from agent_core.rpc.errors import RpcError

DEFAULT_TIMEOUT_MS = 120_000
MAX_TIMEOUT_MS = 600_000

BASH = ToolSpec(
    "bash",
    "Run a shell command (`/bin/sh -c`) on the host, in the workspace root, and return its "
    "combined stdout and stderr with the exit code. Use it for tests, builds, git, package "
    "managers. Do not use it to read, search or edit files (use read, grep, glob, edit): those "
    "tools are safer and their changes are shown as diffs. Commands may need the user's "
    "approval. There is no interactive input (stdin is empty); pass flags such as `--yes`. "
    "To run in a subdirectory use `cd dir && command`. Default timeout 2 minutes "
    "(`timeout` in ms, at most 10 minutes). Long output is truncated, keeping its end.",
    {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "the command line to run"},
            "timeout": {
                "type": "integer",
                "minimum": 1,
                "description": f"timeout in milliseconds (default {DEFAULT_TIMEOUT_MS})",
            },
            "description": {
                "type": "string",
                "description": "what the command does, in 5-10 words, for the user",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    },
)


def _status(result: dict[str, Any]) -> str:
    code = result.get("exit_code")
    if result.get("timed_out"):
        return f"timed out after {result.get('timeout_s', '?')} s and was killed"
    if isinstance(code, int) and code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


async def run_bash(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    command: str = args["command"]
    if not command.strip():
        raise ToolError("command is empty")
    timeout_ms = min(int(args.get("timeout") or DEFAULT_TIMEOUT_MS), MAX_TIMEOUT_MS)
    await ctx.ask(
        "bash",
        bash_subjects(command),
        f"Run `{command}`",
        {"command": command, "description": args.get("description", "")},
    )
    chunks: list[str] = []

    async def on_event(name: str, data: Any) -> None:
        if name in ("stdout", "stderr") and isinstance(data, str):
            chunks.append(data)
            await ctx.emit(ToolOutput(ctx.call_id, name, data))

    try:
        res = await ctx.bridge.call(
            "exec.run",
            {"command": command, "timeout_s": timeout_ms / 1000},
            on_event=on_event,
        )
    except RpcError as exc:
        if exc.code == "ENOENT":
            raise ToolError(f"command not found: {exc.message}") from None
        raise bridge_error(exc, "bash") from None
    output = "".join(chunks)
    if res.get("truncated"):
        output += (
            f"\n[… {res.get('omitted_bytes', 0)} bytes of output omitted by the host …]\n"
            + str(res.get("tail") or "")
        )
    status = _status(res)
    text = (output.rstrip("\n") if output.strip() else "(no output)") + f"\n\n({status})"
    return ToolResult(
        text,
        title=args.get("description") or command,
        metadata={
            "command": command,
            "exit_code": res.get("exit_code"),
            "timed_out": bool(res.get("timed_out")),
            "duration_ms": res.get("duration_ms"),
        },
    )


SHELL_TOOLS = [Tool(BASH, run_bash, "exclusive", (), {"cmd": "command", "script": "command"})]
