"""Compaction: keep a long conversation inside the model's context window. Sans-I/O helpers.

Nothing is deleted: `session.messages` keeps the whole history (and so does the bridge's session
store, which receives every message). Compacting appends one *summary message* — a user message
starting with `SUMMARY_PREFIX`, written by the model from the conversation so far — and requests
then carry only the *window*: the messages from the last summary on. Because the marker is in the
message itself, a session resumed on another device (messages only) compacts the same way.

The summary request itself must fit, so it is built from the window with old tool output
*pruned*: tool results other than the most recent ones are cut to their first lines
(`prune`). The full outputs stay in the history.

When: `AgentLoop` compacts automatically before a model call when the prompt would pass
`threshold` of the model's context window (the last turn's reported prompt size plus an
estimate of what was added since, or a character estimate when the provider reports no usage);
`Agent.compact()` (and `/compact`) does it on demand.
"""

from __future__ import annotations

import json
from dataclasses import replace

from agent_core.llm.types import Message, ModelRequest, TextPart, ToolResultPart, ToolSpec

SUMMARY_PREFIX = "[Kite: summary of the earlier conversation, which was compacted]\n\n"
PRUNED_NOTE = "\n[... older tool output pruned to save context; the full output is kept ...]"
KEEP_RECENT_TOOL_MESSAGES = 2
PRUNE_KEEP_CHARS = 400
CHARS_PER_TOKEN = 4

SUMMARY_SYSTEM = """\
You are summarising a coding session between a user and Kite, a coding agent, so that the agent \
can continue it with only your summary. Write plain text, no preamble. Include:
- the user's requests and goals, in their words where it matters, and any constraints given;
- what was done: files read, created or changed (with paths) and why, commands run and results;
- decisions made and facts learned about the code (names, paths, errors, test status);
- what remains to be done, and the very next step if work was in progress.
Be complete about paths and pending work; be brief about everything else."""

SUMMARY_INSTRUCTION = (
    "Summarise the conversation above following your instructions. It will replace the "
    "conversation in the agent's context."
)

CONTINUE_NOTE = "\n\n(The conversation was compacted here; continue from this summary.)"


def is_summary(message: Message) -> bool:
    return message.role == "user" and message.text().startswith(SUMMARY_PREFIX)


def window_start(messages: list[Message]) -> int:
    """Index of the last summary message (0 when never compacted)."""
    for i in range(len(messages) - 1, -1, -1):
        if is_summary(messages[i]):
            return i
    return 0


def window(messages: list[Message]) -> list[Message]:
    """What a model request carries: the messages from the last summary on."""
    return messages[window_start(messages) :]


def estimate_tokens(
    messages: list[Message], system: str = "", tools: list[ToolSpec] | None = None
) -> int:
    """A rough token count (characters / 4) for when the provider reports no usage."""
    chars = len(system)
    for m in messages:
        for p in m.parts:
            if isinstance(p, TextPart):
                chars += len(p.text)
            elif isinstance(p, ToolResultPart):
                chars += len(p.content)
            else:  # a tool call
                chars += len(p.name) + len(p.raw_arguments or json.dumps(p.arguments))
    for t in tools or []:
        chars += len(t.name) + len(t.description) + len(json.dumps(t.parameters))
    return chars // CHARS_PER_TOKEN


def prune(messages: list[Message], keep_recent: int = KEEP_RECENT_TOOL_MESSAGES) -> list[Message]:
    """Copies of `messages` with tool results cut short, except the last `keep_recent` tool
    messages'. The originals are not modified."""
    tool_idx = [i for i, m in enumerate(messages) if m.role == "tool"]
    old = set(tool_idx[:-keep_recent] if keep_recent else tool_idx)
    out = []
    for i, m in enumerate(messages):
        if i not in old:
            out.append(m)
            continue
        parts = []
        for p in m.parts:
            if isinstance(p, ToolResultPart) and len(p.content) > PRUNE_KEEP_CHARS + 100:
                p = replace(p, content=p.content[:PRUNE_KEEP_CHARS] + PRUNED_NOTE)
            parts.append(p)
        out.append(Message(m.role, parts))
    return out


def pending_request(messages: list[Message]) -> Message | None:
    """The user's message that starts the current run when nothing has answered it yet: it is
    kept out of the summary and carried verbatim after it."""
    if messages and messages[-1].role == "user" and not is_summary(messages[-1]):
        return messages[-1]
    return None


def summary_request(model: str, messages: list[Message], max_tokens: int = 4096) -> ModelRequest:
    """The request that asks the model for a summary of the current window (no tools)."""
    body = window(messages)
    if pending_request(body) is not None:
        body = body[:-1]
    body = prune(body)
    return ModelRequest(
        model=model,
        system=SUMMARY_SYSTEM,
        messages=[*body, Message("user", [TextPart(SUMMARY_INSTRUCTION)])],
        tools=[],
        max_tokens=max_tokens,
    )


def summary_message(text: str, messages: list[Message], *, mid_run: bool = False) -> Message:
    """The summary message to append to `messages` (which it summarises)."""
    body = SUMMARY_PREFIX + text.strip()
    pending = pending_request(window(messages))
    if pending is not None:
        body += "\n\nThe user's latest message, not yet answered:\n\n" + pending.text()
    elif mid_run:
        body += CONTINUE_NOTE
    return Message("user", [TextPart(body)])
