"""Tools on the session rather than the host: todos, questions to the user, diff and undo.

`diff` and `undo` are not offered to models (opencode's set has no such tools); the local
router and UIs call them for `/diff` and `/undo`. They work from the session's change journal,
so they cover exactly what the agent changed, with or without git.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent_core.agent.diffs import unified_diff
from agent_core.agent.events import TodosUpdated
from agent_core.agent.tools.base import Tool, ToolContext, ToolError, ToolResult, bridge_error
from agent_core.agent.tools.files import read_current, write_checked
from agent_core.llm.types import ToolSpec
from agent_core.rpc.errors import RpcError

TODO_ITEM = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "a short unique id"},
        "content": {"type": "string", "description": "what to do, briefly"},
        "status": {
            "type": "string",
            "enum": ["pending", "in_progress", "completed", "cancelled"],
        },
        "priority": {"type": "string", "enum": ["high", "medium", "low"]},
    },
    "required": ["content", "status"],
}

TODOWRITE = ToolSpec(
    "todowrite",
    "Create or update the task list for the current work (send the whole list each time). Use "
    "it for tasks with 3 or more steps: plan the steps, mark one `in_progress` while you work on "
    "it, mark it `completed` right after finishing. The user sees the list.",
    {
        "type": "object",
        "properties": {"todos": {"type": "array", "items": TODO_ITEM}},
        "required": ["todos"],
        "additionalProperties": False,
    },
)

TODOREAD = ToolSpec(
    "todoread",
    "Read the current task list.",
    {"type": "object", "properties": {}, "additionalProperties": False},
)

QUESTION = ToolSpec(
    "question",
    "Ask the user one or more questions and wait for the answers. Use it when a decision is "
    "really theirs (a choice between approaches, missing information); otherwise decide "
    "yourself. Offer options when there are clear choices; the user may also answer freely.",
    {
        "type": "object",
        "properties": {
            "questions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "question": {"type": "string"},
                        "header": {"type": "string", "description": "a short label"},
                        "options": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "label": {"type": "string"},
                                    "description": {"type": "string"},
                                },
                                "required": ["label"],
                            },
                        },
                        "multiple": {
                            "type": "boolean",
                            "description": "several options may be chosen",
                        },
                    },
                    "required": ["question"],
                },
            }
        },
        "required": ["questions"],
        "additionalProperties": False,
    },
)

DIFF = ToolSpec(
    "diff",
    "Show what the agent changed in this session, as a unified diff against the original files.",
    {"type": "object", "properties": {}, "additionalProperties": False},
)

UNDO = ToolSpec(
    "undo",
    "Revert the agent's most recent change (one tool call's edits), unless the files were "
    "changed again on the host since.",
    {"type": "object", "properties": {}, "additionalProperties": False},
)


def _todo_text(todos: list[dict[str, Any]]) -> str:
    return json.dumps(todos, indent=2, ensure_ascii=False)


async def run_todowrite(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    todos = []
    for i, t in enumerate(args["todos"], 1):
        item = {"id": str(t.get("id") or i), "content": t["content"], "status": t["status"]}
        item["priority"] = t.get("priority") or "medium"
        todos.append(item)
    ctx.session.todos = todos
    await ctx.emit(TodosUpdated(list(todos)))
    left = sum(1 for t in todos if t["status"] not in ("completed", "cancelled"))
    return ToolResult(_todo_text(todos), title=f"{left} todos", metadata={"todos": todos})


async def run_todoread(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    todos = ctx.session.todos
    left = sum(1 for t in todos if t["status"] not in ("completed", "cancelled"))
    return ToolResult(_todo_text(todos), title=f"{left} todos", metadata={"todos": todos})


async def run_question(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    questions: list[dict[str, Any]] = args["questions"]
    if not questions:
        raise ToolError("no questions given")
    if ctx.ask_user is None:
        raise ToolError(
            "no user can answer in this non-interactive session; decide yourself and state "
            "what you assumed"
        )
    answers = await ctx.ask_user(questions)
    if answers is None:
        raise ToolError("the user dismissed the questions; proceed with your best judgement")
    lines = ["The user answered:"]
    for q, a in zip(questions, answers, strict=False):
        lines.append(f"- {q['question']}\n  → {a or '(no answer)'}")
    return ToolResult("\n".join(lines), title="question", metadata={"answers": answers})


async def run_diff(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    originals: dict[str, str | None] = {}
    for cs in ctx.session.changes:
        if cs.undone:
            continue
        for fc in cs.files:
            originals.setdefault(fc.path, fc.before)
    if not originals:
        return ToolResult("No changes made by the agent in this session.", title="diff")
    paths = list(originals)
    await ctx.ask("read", paths, "Read changed files for the diff")
    current = await asyncio.gather(*(read_current(ctx, p) for p in paths))
    parts = []
    for p, cur in zip(paths, current, strict=True):
        d = unified_diff(p, originals[p], cur.text if cur else None)
        if d:
            parts.append(d)
    if not parts:
        return ToolResult("The files the agent changed are back to their original content.")
    diff = "".join(parts)
    return ToolResult(diff, title=f"{len(parts)} files changed", metadata={"diff": diff})


async def run_undo(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    cs = ctx.session.last_change()
    if cs is None:
        return ToolResult("Nothing to undo: the agent has not changed any file in this session.")
    paths = [fc.path for fc in cs.files]
    current = await asyncio.gather(*(read_current(ctx, p) for p in paths))
    for fc, cur in zip(cs.files, current, strict=True):
        now = cur.sha256 if cur else None
        if now != fc.after_sha256:
            raise ToolError(
                f"not undone: {fc.path} was changed again after the agent's {cs.tool}; "
                "undo would lose those changes"
            )
    diff = "".join(unified_diff(fc.path, fc.after, fc.before) for fc in cs.files)
    await ctx.ask("edit", paths, f"Undo the {cs.tool} of " + ", ".join(paths), {"diff": diff})
    for fc in reversed(cs.files):
        if fc.before is None:
            try:
                await ctx.bridge.call("fs.delete", {"path": fc.path})
            except RpcError as exc:
                raise bridge_error(exc, f"removing {fc.path}") from None
            ctx.session.seen.pop(fc.path, None)
        else:
            await write_checked(ctx, fc.path, fc.before, fc.after_sha256)
    cs.undone = True
    return ToolResult(
        f"Undid the {cs.tool} of " + ", ".join(paths) + ".",
        title="undo " + ", ".join(paths),
        metadata={"diff": diff, "paths": paths},
    )


SESSION_TOOLS = [
    Tool(TODOWRITE, run_todowrite, "exclusive"),
    Tool(TODOREAD, run_todoread, "read"),
    Tool(QUESTION, run_question, "exclusive"),
    Tool(DIFF, run_diff, "read", offered=False),
    Tool(UNDO, run_undo, "exclusive", offered=False),
]
