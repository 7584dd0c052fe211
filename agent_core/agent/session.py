"""A conversation and what the agent did in it, as plain JSON-serialisable data.

The loop keeps everything it needs between steps here (messages, todos, the file-change journal
used by `/diff` and `/undo`, the hashes of files the model has seen), so a session can be saved
after every step and resumed later: `agent_core/agent/sync.py` saves it through the bridge's
`session.*` ops.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from agent_core.llm.types import Message, Usage

# Full outputs of truncated tool results are kept for `read kite-output:<call id>`; bounded so a
# long session cannot grow without limit.
OUTPUTS_MAX_BYTES = 16 * 1024 * 1024


@dataclass
class FileChange:
    """One file before and after a tool changed it (`None`: did not exist / was removed)."""

    path: str
    before: str | None
    after: str | None
    before_sha256: str | None = None
    after_sha256: str | None = None


@dataclass
class ChangeSet:
    """The files one tool call changed; `/undo` reverts all the sets of one `step`."""

    call_id: str
    tool: str
    files: list[FileChange]
    time: float = field(default_factory=time.time)
    undone: bool = False
    step: int = 0  # Session.step_seq when the change was made

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ChangeSet:
        files = [FileChange(**f) for f in obj.get("files", [])]
        return cls(
            obj["call_id"],
            obj["tool"],
            files,
            obj.get("time", 0.0),
            obj.get("undone", False),
            int(obj.get("step", 0)),
        )


@dataclass
class Session:
    """One conversation. `messages` serialise with `Message.to_json`."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    title: str = ""
    created_at: float = field(default_factory=time.time)
    messages: list[Message] = field(default_factory=list)
    todos: list[dict[str, Any]] = field(default_factory=list)
    changes: list[ChangeSet] = field(default_factory=list)
    # path -> sha256 of the content the model last saw or wrote (guards `write` over stale files)
    seen: dict[str, str] = field(default_factory=dict)
    # call id -> full tool output, for results the model only saw truncated
    outputs: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    # US dollars for `usage`, from agent_core.llm.models' prices; None once a turn used a model
    # whose price is unknown (never guessed).
    cost_usd: float | None = 0.0
    step_seq: int = 0  # model turns so far in this session, across runs: names a step for undo
    # The last model turn's prompt + output tokens as reported, and len(messages) then: the base
    # of the context-size estimate for automatic compaction (0: not reported).
    context_tokens: int = 0
    context_at: int = 0

    def keep_output(self, call_id: str, text: str) -> None:
        self.outputs[call_id] = text
        total = sum(len(v) for v in self.outputs.values())
        while total > OUTPUTS_MAX_BYTES and len(self.outputs) > 1:
            oldest = next(iter(self.outputs))
            total -= len(self.outputs.pop(oldest))

    def add_usage(self, usage: Usage, cost_usd: float | None = 0.0) -> None:
        """Add one model turn's tokens and their cost (None: the model's price is unknown)."""
        tokens = (
            usage.input_tokens
            + usage.output_tokens
            + usage.cache_read_tokens
            + usage.cache_write_tokens
        )
        if tokens:
            if cost_usd is None:
                self.cost_usd = None
            elif self.cost_usd is not None:
                self.cost_usd += cost_usd
        u = self.usage
        u.input_tokens += usage.input_tokens
        u.output_tokens += usage.output_tokens
        u.cache_read_tokens += usage.cache_read_tokens
        u.cache_write_tokens += usage.cache_write_tokens

    def last_change(self) -> ChangeSet | None:
        for cs in reversed(self.changes):
            if not cs.undone:
                return cs
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "created_at": self.created_at,
            "messages": [m.to_json() for m in self.messages],
            "todos": self.todos,
            "changes": [c.to_json() for c in self.changes],
            "seen": self.seen,
            "outputs": self.outputs,
            "usage": asdict(self.usage),
            "cost_usd": self.cost_usd,
            "step_seq": self.step_seq,
            "context_tokens": self.context_tokens,
            "context_at": self.context_at,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Session:
        return cls(
            id=obj["id"],
            title=obj.get("title", ""),
            created_at=obj.get("created_at", 0.0),
            messages=[Message.from_json(m) for m in obj.get("messages", [])],
            todos=list(obj.get("todos", [])),
            changes=[ChangeSet.from_json(c) for c in obj.get("changes", [])],
            seen=dict(obj.get("seen", {})),
            outputs=dict(obj.get("outputs", {})),
            usage=Usage(**obj.get("usage", {})),
            cost_usd=obj.get("cost_usd", 0.0),
            step_seq=int(obj.get("step_seq", 0)),
            context_tokens=int(obj.get("context_tokens", 0)),
            context_at=int(obj.get("context_at", 0)),
        )
