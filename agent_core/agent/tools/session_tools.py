"""Tools on the session rather than the host: todos, questions to the user, diff, undo, redo.

`diff`, `undo` and `redo` are not offered to models (opencode's set has no such tools); the
local router and UIs call them for `/diff`, `/undo`, `/redo`. They work from the session's change
journal, so they cover exactly what the agent changed, with or without git; undo and redo restore
content from the bridge's snapshots (`agent_core/agent/undo.py`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent_core.agent.diffs import unified_diff
from agent_core.agent.events import TodosUpdated
from agent_core.agent.session import ChangeSet
from agent_core.agent.tools.base import Tool, ToolContext, ToolError, ToolResult
from agent_core.agent.tools.files import read_current
from agent_core.agent.undo import UndoError, redo_target, undo_target
from agent_core.agent.undo import redo as redo_step
from agent_core.agent.undo import undo as undo_step
from agent_core.llm.types import ToolSpec

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
    "Revert the file changes of the agent's most recent step (from the bridge's snapshots), "
    "unless the files were changed again on the host since.",
    {"type": "object", "properties": {}, "additionalProperties": False},
)

REDO = ToolSpec(
    "redo",
    "Re-apply the step the last undo reverted, unless the files were changed since.",
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


def _step_diff(sets: list[ChangeSet], reverse: bool) -> str:
    parts = []
    for cs in reversed(sets) if reverse else sets:
        for fc in reversed(cs.files) if reverse else cs.files:
            a, b = (fc.after, fc.before) if reverse else (fc.before, fc.after)
            parts.append(unified_diff(fc.path, a, b))
    return "".join(parts)


async def _undo_or_redo(ctx: ToolContext, which: str) -> ToolResult:
    sets = undo_target(ctx.session) if which == "undo" else redo_target(ctx.session)
    if not sets:
        what = "the agent has not changed any file" if which == "undo" else "no undone step"
        return ToolResult(f"Nothing to {which}: {what} in this session.", title=which)
    paths = list(dict.fromkeys(fc.path for cs in sets for fc in cs.files))
    diff = _step_diff(sets, reverse=which == "undo")
    tools = ", ".join(dict.fromkeys(cs.tool for cs in sets))
    await ctx.ask(
        "edit", paths, f"{which.capitalize()} the {tools} of " + ", ".join(paths), {"diff": diff}
    )
    try:
        done = await (undo_step if which == "undo" else redo_step)(ctx.bridge, ctx.session)
    except UndoError as exc:
        raise ToolError(f"not {which}ne: {exc.message}") from None
    verb = "Undid" if which == "undo" else "Redid"
    return ToolResult(
        f"{verb} the {tools} of " + ", ".join(paths) + ".",
        title=f"{which} " + ", ".join(paths),
        metadata={"diff": diff, "paths": done},
    )


async def run_undo(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    return await _undo_or_redo(ctx, "undo")


async def run_redo(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    return await _undo_or_redo(ctx, "redo")


SESSION_TOOLS = [
    Tool(TODOWRITE, run_todowrite, "exclusive"),
    Tool(TODOREAD, run_todoread, "read"),
    Tool(QUESTION, run_question, "exclusive"),
    Tool(DIFF, run_diff, "read", offered=False),
    Tool(UNDO, run_undo, "exclusive", offered=False),
    Tool(REDO, run_redo, "exclusive", offered=False),
]
