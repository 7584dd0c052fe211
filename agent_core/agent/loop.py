"""The agent loop: a sans-I/O state machine (`AgentLoop`) and a thin async driver (`Agent`).

`AgentLoop` is fed what happened (a user message, model stream events, tool results, an abort)
and says what to do next (`next_action()`: call the model, run a wave of tool calls, or done).
It owns the conversation rules: tool calls are scheduled in waves (independent calls in
parallel), each call's arguments are checked against its schema, outputs are truncated for the
model with the full text kept, a call repeated three times in a row needs the user's approval
(doom-loop guard), the step budget ends the run, and an abort leaves a valid conversation (every
tool call answered). It does no I/O, so it runs the same under Pyodide and in tests.

`Agent` drives it with a `Provider`, a `Bridge` and the UI's callbacks. It uses only asyncio
primitives that Pyodide's event loop has (tasks, gather, sleep, cancellation).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agent_core.agent import compaction
from agent_core.agent.events import (
    AgentEvent,
    AssistantDelta,
    AssistantMessage,
    Compacted,
    Finished,
    FinishReason,
    Retrying,
    StepFinished,
    StepStarted,
    ToolCallProgress,
    ToolFinished,
    ToolStarted,
)
from agent_core.agent.permissions import PermissionGate, Refusal
from agent_core.agent.session import Session
from agent_core.agent.tools import ToolRegistry, ToolResult, default_registry, execute
from agent_core.agent.tools.base import (
    Bridge,
    QuestionsFn,
    Tool,
    ToolContext,
    ToolError,
    maybe_await,
)
from agent_core.agent.truncate import truncate
from agent_core.agent.undo import net_moves, redo_target, undo_target
from agent_core.agent.undo import redo as redo_changes
from agent_core.agent.undo import undo as undo_changes
from agent_core.llm.models import ModelInfo
from agent_core.llm.models import cost as model_cost
from agent_core.llm.models import lookup as lookup_model
from agent_core.llm.types import (
    Message,
    ModelRequest,
    Provider,
    ProviderError,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolResultPart,
    TurnEnd,
)

SYSTEM_PROMPT = """\
You are Kite, a coding agent. You work in the user's workspace on their machine through tools \
that run there: read, list, glob and grep to look, edit, write and apply_patch to change files \
(every change is shown to the user as a diff), bash to run commands (tests, builds, git).

- Paths are relative to the workspace root, '/'-separated. Never use absolute paths.
- Look before you change: read a file before editing it, and keep edits small and exact.
- Prefer edit for changes to existing files; write for new files or complete rewrites.
- Run independent read-only calls in the same step; they run in parallel.
- After changing code, run the relevant tests or checks with bash when possible.
- If a tool call is refused or denied, do not repeat it: adapt, or explain what is needed.
- Plan multi-step work with todowrite. Ask the user with question only when the choice is theirs.
- Be concise. When done, say what you changed and how you verified it."""


def system_prompt(info: dict[str, Any] | None = None, today: str | None = None) -> str:
    """The system prompt plus what the host said about itself (`sys.info`): the workspace and
    what its policy allows, so the model does not try what the host will refuse."""
    lines = []
    if info:
        if info.get("workspace"):
            lines.append(f"Workspace: {info['workspace']} (on the user's machine, via the bridge)")
        policy = info.get("policy") or {}
        if policy.get("read_only"):
            lines.append("The host is read-only: files cannot be changed.")
        if policy.get("exec_enabled") is False:
            lines.append("The host does not allow commands: bash is unavailable.")
    if today:
        lines.append(f"Today: {today}")
    return SYSTEM_PROMPT + ("\n\n" + "\n".join(lines) if lines else "")


LAST_STEP_NOTE = (
    "\n\nThis is the last step allowed for this task: tools are no longer available. Reply with "
    "text only: what was done, what remains, and how to continue."
)


@dataclass
class LoopConfig:
    model: str = ""
    system: str = SYSTEM_PROMPT
    max_steps: int = 50
    max_tokens: int = 4096
    temperature: float | None = None
    doom_loop_threshold: int = 3
    stop_on_reject: bool = True  # a plain "reject" ends the run; reject + message continues
    # Retries of retryable provider errors before any output of the turn. The HTTP providers
    # (agent_core.llm.providers) retry on their own, so the loop does not by default.
    retries: int = 0
    # Automatic compaction: the model's context window in tokens (0: never automatic; the shells
    # fill it from agent_core.llm.models) and the share of it that triggers a summary.
    context_limit: int = 0
    compact_threshold: float = 0.8
    # Per-model context windows and prices overriding agent_core.llm.models' table (config).
    models: dict[str, ModelInfo] | None = None


# -- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallModel:
    request: ModelRequest
    step: int


@dataclass(frozen=True)
class Compact:
    """Ask the model for a summary (`request`), then call `compacted(text)` or
    `compaction_failed(error)`; the model turn of `step` follows."""

    request: ModelRequest
    step: int
    tokens_before: int


@dataclass(frozen=True)
class PlannedCall:
    call: ToolCallPart
    arguments: dict[str, Any]  # validated, aliases resolved
    repeat: bool = False  # the doom-loop guard wants the user's approval first


@dataclass(frozen=True)
class RunTools:
    calls: list[PlannedCall]


@dataclass(frozen=True)
class Wait:
    """Results of the last `RunTools` (or the model turn) are still outstanding."""


@dataclass(frozen=True)
class Done:
    reason: FinishReason
    text: str
    error: str | None = None


Action = CallModel | Compact | RunTools | Wait | Done
Phase = Literal["idle", "model", "tools", "done"]


def _signature(call: ToolCallPart) -> str:
    return call.name + "\x00" + json.dumps(call.arguments, sort_keys=True, default=str)


def _overlaps(a: str, b: str) -> bool:
    return a == b or a == "." or b == "." or a.startswith(b + "/") or b.startswith(a + "/")


class AgentLoop:
    """One run of the agent over a session: fed events, returns actions. No I/O."""

    def __init__(
        self, session: Session, registry: ToolRegistry, config: LoopConfig | None = None
    ) -> None:
        self.session = session
        self.registry = registry
        self.config = config or LoopConfig()
        self.phase: Phase = "idle"
        self.step = 0
        self.done: Done | None = None
        self._events: list[AgentEvent] = []
        self._partial: list[str] = []
        self._turn_ended = False
        self._calls: list[ToolCallPart] = []
        self._results: dict[str, ToolResultPart] = {}
        self._waves: list[list[PlannedCall]] = []
        self._inflight: set[str] = set()
        self._history: list[str] = []
        self._stop_after_wave = False
        self._last_text = ""
        self._scanned = 0  # messages checked for summaries so far (the window is incremental)
        self._window_start = 0
        self._price = lookup_model(self.config.model, self.config.models)
        self._compact: Compact | None = None  # a summary being made
        self._compact_tried = False  # at most one automatic compaction per model turn

    # -- inputs ---------------------------------------------------------------------------

    def submit(self, message: str | Message) -> None:
        """A user message starts the run."""
        if self.phase not in ("idle", "done"):
            raise RuntimeError(f"cannot submit while {self.phase}")
        msg = message if isinstance(message, Message) else Message("user", [TextPart(message)])
        self.session.messages.append(msg)
        if not self.session.title:
            self.session.title = msg.text().strip().split("\n")[0][:80]
        self.step = 0
        self.done = None
        self._history = []
        self._last_text = ""
        self._start_model_turn()

    def feed(self, event: StreamEvent) -> None:
        """A model stream event of the current turn."""
        if self.phase != "model" or self._turn_ended:
            raise RuntimeError("no model turn is running")
        if isinstance(event, TextDelta):
            self._partial.append(event.text)
            self._events.append(AssistantDelta(event.text))
        elif isinstance(event, ToolCallDelta):
            self._events.append(ToolCallProgress(event.index, event.name, event.arguments_fragment))
        elif isinstance(event, TurnEnd):
            self._turn_ended = True
            self._end_model_turn(event)

    def fail(self, error: str) -> None:
        """The provider failed for good (after retries): end the run with the error."""
        if self.phase == "model" and not self._turn_ended:
            if self._partial:
                self.session.messages.append(
                    Message("assistant", [TextPart("".join(self._partial))])
                )
            self._finish("error", error=error)
        elif self.phase != "done":
            self._finish("error", error=error)

    def compacted(self, summary: str) -> None:
        """The model's summary for the pending `Compact`: append the summary message."""
        pending = self._compact
        if pending is None:
            raise RuntimeError("no compaction is running")
        self._compact = None
        before = len(compaction.window(self.session.messages))
        mid_run = self.step > 1
        self.session.messages.append(
            compaction.summary_message(summary, self.session.messages, mid_run=mid_run)
        )
        self.session.context_tokens = 0  # unknown until the next turn reports it
        self._events.append(Compacted(before, pending.tokens_before, auto=True))

    def compaction_failed(self, error: str) -> None:
        """No summary: go on with the full window (the provider may still cope)."""
        pending = self._compact
        if pending is None:
            raise RuntimeError("no compaction is running")
        self._compact = None
        self._events.append(Compacted(0, pending.tokens_before, auto=True, error=error))

    def restart_turn(self) -> None:
        """Forget a failed turn's partial output before a retry."""
        self._partial = []

    def tool_result(self, call_id: str, result: ToolResult) -> None:
        if call_id not in self._inflight:
            raise RuntimeError(f"no running tool call {call_id!r}")
        self._inflight.discard(call_id)
        self._record(call_id, result)
        rejected = result.status == "rejected" and not result.metadata.get("feedback")
        if rejected and self.config.stop_on_reject:
            self._stop_after_wave = True

    def abort(self) -> None:
        """Stop now. Calls without a result get one saying so; partial text is kept."""
        if self.phase == "model" and not self._turn_ended:
            if self._partial:
                self.session.messages.append(
                    Message("assistant", [TextPart("".join(self._partial))])
                )
            self._finish("aborted")
        elif self.phase == "tools":
            for call in self._calls:
                if call.id not in self._results:
                    self._record(call.id, ToolResult("aborted by the user", status="aborted"))
            self._inflight.clear()
            self._waves = []
            self._close_tools_step()
            self._finish("aborted")

    # -- outputs --------------------------------------------------------------------------

    def events(self) -> list[AgentEvent]:
        """Events since the last call, in order (drain them after every input)."""
        out, self._events = self._events, []
        return out

    def next_action(self) -> Action:
        if self.phase == "done" and self.done is not None:
            return self.done
        if self.phase == "model":
            if self._turn_ended or self._compact is not None:
                return Wait()
            limit = self.config.context_limit
            if not self._compact_tried and limit > 0:
                self._compact_tried = True
                tokens = self.context_estimate()
                if tokens > limit * self.config.compact_threshold and len(self._window()) > 2:
                    request = compaction.summary_request(
                        self.config.model, self.session.messages, self.config.max_tokens
                    )
                    self._compact = Compact(request, self.step, tokens)
                    return self._compact
            return CallModel(self._request(), self.step)
        if self.phase == "tools":
            if self._inflight:
                return Wait()
            if self._waves and not self._stop_after_wave:
                wave = self._waves.pop(0)
                for pc in wave:
                    self._inflight.add(pc.call.id)
                    self._events.append(ToolStarted(pc.call, pc.arguments))
                return RunTools(wave)
            for pcs in self._waves:  # the run stops: the rest are answered without running
                for pc in pcs:
                    self._record(
                        pc.call.id,
                        ToolResult("not run: the user rejected an earlier call", status="skipped"),
                    )
            self._waves = []
            self._close_tools_step()
            if self._stop_after_wave:
                self._finish("rejected")
            elif self.step >= self.config.max_steps:
                self._finish("max_steps")
            else:
                self._start_model_turn()
            return self.next_action()
        raise RuntimeError("nothing to do: submit a message first")

    # -- internals ------------------------------------------------------------------------

    @property
    def turn_ended(self) -> bool:
        return self._turn_ended

    @property
    def last_step(self) -> bool:
        return self.step >= self.config.max_steps

    def _window(self) -> list[Message]:
        """`compaction.window(session.messages)`, scanning only messages added since."""
        msgs = self.session.messages
        if self._scanned > len(msgs):  # the list was replaced
            self._scanned, self._window_start = 0, 0
        for i in range(self._scanned, len(msgs)):
            if compaction.is_summary(msgs[i]):
                self._window_start = i
        self._scanned = len(msgs)
        return msgs[self._window_start :]

    def context_estimate(self) -> int:
        """Tokens the next request would take: the last reported prompt + output, plus an
        estimate of the messages added since; a character estimate when nothing was reported."""
        s = self.session
        if s.context_tokens > 0 and s.context_at <= len(s.messages):
            added = s.messages[s.context_at :]
            if not any(compaction.is_summary(m) for m in added):
                return s.context_tokens + compaction.estimate_tokens(added)
        tools = [] if self.last_step else self.registry.specs()
        return compaction.estimate_tokens(self._window(), self.config.system, tools)

    def _request(self) -> ModelRequest:
        system = self.config.system + (LAST_STEP_NOTE if self.last_step else "")
        return ModelRequest(
            model=self.config.model,
            system=system,
            messages=self._window(),
            tools=[] if self.last_step else self.registry.specs(),
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
        )

    def _start_model_turn(self) -> None:
        self.phase = "model"
        self.step += 1
        self.session.step_seq += 1
        self._compact_tried = False
        self._partial = []
        self._turn_ended = False
        self._events.append(StepStarted(self.step))

    def _end_model_turn(self, end: TurnEnd) -> None:
        msg = end.message
        if msg.role != "assistant":
            msg = Message("assistant", list(msg.parts))
        self.session.messages.append(msg)
        cost = self._price.price.cost(end.usage) if self._price and self._price.price else None
        self.session.add_usage(end.usage, cost)
        u = end.usage
        reported = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens + u.output_tokens
        if reported > 0:
            self.session.context_tokens = reported
            self.session.context_at = len(self.session.messages)
        self._events.append(AssistantMessage(msg, end.stop_reason, end.usage))
        if msg.text().strip():
            self._last_text = msg.text()
        calls = msg.tool_calls()
        if calls:
            self._plan(calls)
            return
        self._events.append(StepFinished(self.step))
        if end.stop_reason == "error":  # e.g. the local router cannot do what was asked
            first = msg.text().strip().split("\n")[0]
            self._finish("error", error=first or "the model ended its turn with an error")
        elif end.stop_reason == "max_tokens":
            self._finish("max_tokens")
        else:
            self._finish("end_turn")

    def _plan(self, calls: list[ToolCallPart]) -> None:
        """Validate calls and group them into waves of independent calls, in order."""
        self.phase = "tools"
        self._calls = calls
        self._results = {}
        self._waves = []
        self._stop_after_wave = False
        wave: list[tuple[PlannedCall, str, list[str]]] = []
        threshold = self.config.doom_loop_threshold
        for call in calls:
            if self.last_step:
                self._record(
                    call.id, ToolResult("not run: the step limit is reached", status="skipped")
                )
                continue
            args, error = self.registry.prepare(call.name, call.arguments)
            error = call.argument_error() or error  # unparseable arguments: never run
            if error:
                self._record(call.id, ToolResult(error, title=call.name, status="error"))
                continue
            sig = _signature(call)
            recent = self._history[-(threshold - 1) :] if threshold > 1 else []
            repeat = (
                threshold > 0 and len(recent) == threshold - 1 and all(s == sig for s in recent)
            )
            self._history.append(sig)
            tool = self.registry.get(call.name)
            assert tool is not None
            paths = self.registry.paths(call.name, args)
            pc = PlannedCall(call, args, repeat)
            if wave and self._conflicts(tool.kind, paths, wave):
                self._waves.append([p for p, _, _ in wave])
                wave = []
            wave.append((pc, tool.kind, paths))
        if wave:
            self._waves.append([p for p, _, _ in wave])

    @staticmethod
    def _conflicts(
        kind: str, paths: list[str], wave: list[tuple[PlannedCall, str, list[str]]]
    ) -> bool:
        if kind == "exclusive":
            return True
        for _, other_kind, other_paths in wave:
            if other_kind == "exclusive":
                return True
            if kind == "read" and other_kind == "read":
                continue
            if any(_overlaps(a, b) for a in paths for b in other_paths):
                return True
        return False

    def _record(self, call_id: str, result: ToolResult) -> None:
        call = next(c for c in self._calls if c.id == call_id)
        keep = "both" if call.name == "bash" else "head"
        cut = truncate(result.output, keep=keep)
        content = cut.text
        if cut.truncated:
            self.session.keep_output(call_id, result.output)
            content += (
                f"\n\n(Output truncated: {cut.total_lines} lines, {cut.total_bytes} bytes in "
                f'full. The full output is kept: read it with file_path="kite-output:{call_id}" '
                "and offset/limit, or narrow the call.)"
            )
        self._results[call_id] = ToolResultPart(call_id, content, result.is_error)
        self._events.append(ToolFinished(call, result, content, cut.truncated))

    def _close_tools_step(self) -> None:
        parts = [self._results[c.id] for c in self._calls if c.id in self._results]
        self.session.messages.append(Message("tool", list(parts)))
        self._events.append(StepFinished(self.step))
        self._calls = []

    def _finish(self, reason: FinishReason, error: str | None = None) -> None:
        self.phase = "done"
        self.done = Done(reason, self._last_text, error)
        self._events.append(Finished(reason, self._last_text, error))


# -- the async driver -----------------------------------------------------------------------


class CompactionError(RuntimeError):
    """The conversation could not be summarised (e.g. the local router has no model)."""


EventSink = Callable[[AgentEvent], Awaitable[None] | None]


@dataclass
class RunResult:
    reason: FinishReason
    text: str
    error: str | None = None
    steps: int = 0
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason == "end_turn"


class Agent:
    """Runs user messages through the loop: the model, the tools, the UI callbacks.

    - `on_event(event)` (sync or async) receives every `AgentEvent`, in order.
    - The `PermissionGate`'s `approve(request)` answers "ask" rules; without it, asks are refused.
    - `ask_user(questions)` answers the `question` tool; None in non-interactive shells.
    - `abort()` stops the current run at once: in-flight bridge requests are cancelled (the
      client sends `cancel`), the session stays consistent, and `run` returns "aborted".
    - `command_provider` (the local router) handles slash commands like `/diff` and `/undo`
      whatever the main provider is.
    """

    def __init__(
        self,
        provider: Provider,
        bridge: Bridge,
        *,
        session: Session | None = None,
        registry: ToolRegistry | None = None,
        gate: PermissionGate | None = None,
        config: LoopConfig | None = None,
        on_event: EventSink | None = None,
        ask_user: QuestionsFn | None = None,
        command_provider: Any | None = None,
    ) -> None:
        self.provider = provider
        self.bridge = bridge
        self.session = session or Session()
        self.registry = registry or default_registry()
        self.gate = gate or PermissionGate()
        self.config = config or LoopConfig()
        self.on_event = on_event
        self.ask_user = ask_user
        self.command_provider = command_provider
        self._task: asyncio.Task[Any] | None = None
        self._abort_requested = False

    @property
    def running(self) -> bool:
        return self._task is not None

    def abort(self) -> bool:
        """Abort the running step (True if something was running)."""
        if self._task is None:
            return False
        self._abort_requested = True
        self._task.cancel()
        return True

    # -- undo / redo of a step's file changes (docs/architecture.md) -----------------------

    @property
    def can_undo(self) -> bool:
        return bool(undo_target(self.session))

    @property
    def can_redo(self) -> bool:
        return bool(redo_target(self.session))

    def undo_preview(self) -> list[str]:
        """The paths the next `undo()` would restore (no I/O)."""
        return [m.path for m in net_moves(undo_target(self.session))]

    def redo_preview(self) -> list[str]:
        return [m.path for m in net_moves(redo_target(self.session))]

    async def undo(self) -> list[str]:
        """Revert the newest step's file changes from the bridge's snapshots; the paths
        restored ([] when there is nothing to undo). Raises `UndoError` (code ECONFLICT when a
        file changed on the host since that step: then nothing is restored)."""
        if self._task is not None:
            raise RuntimeError("cannot undo while the agent is running")
        return await undo_changes(self.bridge, self.session)

    async def redo(self) -> list[str]:
        """Re-apply the step the last `undo()` reverted; the paths written ([]: nothing)."""
        if self._task is not None:
            raise RuntimeError("cannot redo while the agent is running")
        return await redo_changes(self.bridge, self.session)

    # -- compaction (agent_core/agent/compaction.py) ---------------------------------------

    async def _summarise(self, provider: Provider, request: ModelRequest) -> str:
        """The model's summary text for a compaction request."""
        end: TurnEnd | None = None
        stream = provider.stream(request)
        try:
            async for event in stream:
                if isinstance(event, TurnEnd):
                    end = event
                    break
        finally:
            await _close(stream)
        if end is None:
            raise CompactionError("the model's summary stream ended early")
        if end.stop_reason == "error" or not end.message.text().strip():
            raise CompactionError(f"{provider.name} cannot summarise this conversation")
        self.session.add_usage(
            end.usage, model_cost(self.config.model, end.usage, self.config.models)
        )
        return end.message.text()

    async def compact(self) -> int:
        """Summarise the conversation now (`/compact`): requests then carry the summary instead
        of the messages before it; the history itself is kept. Returns how many messages the
        summary replaces (0: nothing to compact). Raises `CompactionError` or `ProviderError`."""
        if self._task is not None:
            raise RuntimeError("cannot compact while the agent is running")
        messages = self.session.messages
        win = compaction.window(messages)
        if len(win) < 2:
            return 0
        loop = AgentLoop(self.session, self.registry, self.config)
        tokens = loop.context_estimate()
        request = compaction.summary_request(self.config.model, messages, self.config.max_tokens)
        summary = await self._summarise(self.provider, request)
        self.session.messages.append(compaction.summary_message(summary, messages))
        self.session.context_tokens = 0
        await self._emit(Compacted(len(win), tokens, auto=False))
        return len(win)

    async def _compact_command(self) -> RunResult:
        try:
            n = await self.compact()
        except (CompactionError, ProviderError) as exc:
            return RunResult("error", "", f"cannot compact: {exc}")
        text = (
            f"Compacted: a summary now stands for the {n} earlier messages (kept in the history)."
            if n
            else "Nothing to compact yet."
        )
        await self._emit(Finished("end_turn", text))
        return RunResult("end_turn", text)

    def _provider_for(self, text: str) -> Provider:
        cp = self.command_provider
        if cp is not None and cp is not self.provider and text.lstrip().startswith("/"):
            handles = getattr(cp, "handles", None)
            if handles is None or handles(text):
                return cp
        return self.provider

    async def _emit(self, event: AgentEvent) -> None:
        if self.on_event is not None:
            await maybe_await(self.on_event(event))

    async def _flush(self, loop: AgentLoop) -> None:
        for ev in loop.events():
            await self._emit(ev)

    async def run(self, message: str | Message) -> RunResult:
        """Run one user message to the end (or an abort); returns how it ended."""
        if self._task is not None:
            raise RuntimeError("the agent is already running")
        text = message if isinstance(message, str) else message.text()
        if text.strip() == "/compact":
            return await self._compact_command()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._abort_requested = False
        text = message if isinstance(message, str) else message.text()
        provider = self._provider_for(text)
        loop = AgentLoop(self.session, self.registry, self.config)
        refusals_before = len(self.gate.refusals)
        try:
            loop.submit(message)
            await self._flush(loop)
            while True:
                action = loop.next_action()
                await self._flush(loop)
                if isinstance(action, CallModel):
                    await self._model_turn(loop, provider, action.request)
                elif isinstance(action, Compact):
                    try:
                        summary = await self._summarise(self.provider, action.request)
                    except (ProviderError, CompactionError) as exc:
                        loop.compaction_failed(str(exc))
                    else:
                        loop.compacted(summary)
                elif isinstance(action, RunTools):
                    await self._run_wave(loop, action.calls)
                elif isinstance(action, Done):
                    break
                else:  # Wait: cannot happen with this driver; keep the loop honest
                    raise RuntimeError("agent loop is waiting on nothing")
        except asyncio.CancelledError:
            loop.abort()
            if not self._abort_requested:
                self._task = None
                raise
            task.uncancel()
            await self._flush(loop)
        finally:
            self._task = None
        done = loop.done or Done("aborted", "")
        return RunResult(
            done.reason, done.text, done.error, loop.step, self.gate.refusals[refusals_before:]
        )

    async def _model_turn(self, loop: AgentLoop, provider: Provider, request: ModelRequest) -> None:
        attempt = 0
        while True:
            started = False
            stream = provider.stream(request)
            try:
                async for event in stream:
                    started = True
                    loop.feed(event)
                    await self._flush(loop)
                    if isinstance(event, TurnEnd):
                        break
                await _close(stream)
                if not loop.turn_ended:
                    loop.fail(f"{provider.name}: the model stream ended without finishing its turn")
                return
            except ProviderError as exc:
                if exc.retryable and not started and attempt < self.config.retries:
                    attempt += 1
                    delay = exc.retry_after_s if exc.retry_after_s is not None else 2.0**attempt
                    await self._emit(Retrying(attempt, delay, str(exc)))
                    loop.restart_turn()
                    await asyncio.sleep(delay)
                    continue
                loop.fail(f"{provider.name}: {exc}")
                return
            except Exception as exc:  # a broken adapter or a lost bridge ends the run, clearly
                loop.fail(f"{provider.name}: {type(exc).__name__}: {exc}")
                return
            finally:
                await self._flush(loop)

    async def _run_wave(self, loop: AgentLoop, calls: list[PlannedCall]) -> None:
        async def one(pc: PlannedCall) -> None:
            tool = self.registry.get(pc.call.name)
            assert tool is not None
            ctx = ToolContext(
                self.bridge,
                self.session,
                self.gate,
                pc.call.id,
                pc.call.name,
                self._emit,
                self.ask_user,
            )
            if pc.repeat:
                result = await execute(_doom_guarded(tool), pc.arguments, ctx)
            else:
                result = await execute(tool, pc.arguments, ctx)
            loop.tool_result(pc.call.id, result)
            await self._flush(loop)

        if len(calls) == 1:  # no task for a lone call: one event-loop hop less (Pyodide)
            await one(calls[0])
        else:
            await asyncio.gather(*(one(pc) for pc in calls))


async def _close(stream: Any) -> None:
    """Close a provider stream left after its TurnEnd now, rather than through the event loop's
    async-generator finaliser (a scheduled task per model turn: under Pyodide a timer each)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _doom_guarded(tool: Tool) -> Tool:
    """The same tool, asking `doom_loop` permission before it runs."""

    async def run(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if ctx.gate.approve is None and ctx.gate.decide("doom_loop", [tool.name]) == "ask":
            raise ToolError(
                f"not run: this is the third identical {tool.name} call in a row and would give "
                "the same result; do something different, or finish and report"
            )
        await ctx.ask(
            "doom_loop",
            [tool.name],
            f"{tool.name} was called three times in a row with the same input; continue?",
            {"arguments": args},
        )
        return await tool.run(args, ctx)

    return replace(tool, run=run)
