"""What the agent loop tells a UI, in order. Plain dataclasses: a UI matches on the type.

A run emits: `StepStarted`, then `AssistantDelta`s (and `ToolCallProgress`) while the model
streams, `AssistantMessage` when its turn ends, then for each tool call `ToolStarted`,
`ToolOutput`s (bash), `ToolFinished`; then `StepFinished` (a good moment to save the session),
and so on until exactly one `Finished`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agent_core.llm.types import Message, ToolCallPart, Usage

if TYPE_CHECKING:
    from agent_core.agent.tools.base import ToolResult

FinishReason = Literal["end_turn", "max_steps", "max_tokens", "aborted", "rejected", "error"]


@dataclass(frozen=True)
class StepStarted:
    step: int  # 1-based, per run


@dataclass(frozen=True)
class AssistantDelta:
    text: str


@dataclass(frozen=True)
class ToolCallProgress:
    index: int
    name: str | None
    arguments_fragment: str


@dataclass(frozen=True)
class AssistantMessage:
    message: Message
    stop_reason: str
    usage: Usage


@dataclass(frozen=True)
class ToolStarted:
    call: ToolCallPart
    arguments: dict[str, Any]  # normalised (aliases resolved)


@dataclass(frozen=True)
class ToolOutput:
    call_id: str
    stream: str  # "stdout" | "stderr"
    text: str


@dataclass(frozen=True)
class ToolFinished:
    call: ToolCallPart
    result: ToolResult  # full output, title, metadata (e.g. "diff"), status
    content: str  # what the model sees (possibly truncated)
    truncated: bool


@dataclass(frozen=True)
class TodosUpdated:
    todos: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Retrying:
    attempt: int
    delay_s: float
    error: str


@dataclass(frozen=True)
class Compacted:
    """The conversation was summarised (`agent_core/agent/compaction.py`); `error` when the
    summary could not be made (the run goes on uncompacted)."""

    messages: int  # messages the summary replaces in requests
    tokens_before: int  # the estimated prompt size that triggered it
    auto: bool
    error: str | None = None


@dataclass(frozen=True)
class StepFinished:
    step: int


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    text: str  # the last assistant text of the run
    error: str | None = None


AgentEvent = (
    StepStarted
    | AssistantDelta
    | ToolCallProgress
    | AssistantMessage
    | ToolStarted
    | ToolOutput
    | ToolFinished
    | TodosUpdated
    | Retrying
    | Compacted
    | StepFinished
    | Finished
)
