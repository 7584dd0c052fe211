"""The agent's tools: opencode's names and argument conventions, run through the bridge.

Offered to models: read, write, edit, apply_patch, glob, grep, list, bash, todowrite, todoread,
question. Not offered (for `/diff`, `/undo`, `/redo` and UIs): diff, undo, redo.
"""

from __future__ import annotations

from agent_core.agent.tools.base import (
    Bridge,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    execute,
)
from agent_core.agent.tools.files import FILE_TOOLS
from agent_core.agent.tools.session_tools import SESSION_TOOLS
from agent_core.agent.tools.shell import SHELL_TOOLS

__all__ = [
    "Bridge",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "default_registry",
    "execute",
]


def default_registry() -> ToolRegistry:
    return ToolRegistry([*FILE_TOOLS, *SHELL_TOOLS, *SESSION_TOOLS])
