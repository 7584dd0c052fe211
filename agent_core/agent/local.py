"""`local`: the embedded provider used when no model is configured. No model, no network.

A deterministic intent router: it turns plain commands into tool calls, then shows their
results. It is honest about its limits: anything it does not recognise gets an explanation and
the list of what it can do, never a guess.

    /read PATH [START[-END]]   open README.md · show src/app.py lines 10-20
    /ls [PATH]                 list files · what's in src
    /grep PATTERN [PATH]       search for TODO · find "def main" in src
    /glob PATTERN              find files named *.py
    /run COMMAND               run `make build` · run the tests
    /diff                      show the diff · what changed
    /undo                      undo · revert the last change
    /redo                      redo · re-apply what undo reverted
    /help                      help · what can you do

It implements the `Provider` protocol: on a user message it yields one turn with tool calls;
when it sees the tool results it yields a final text turn showing them. "run the tests" takes
one more step: it first looks for project files (in parallel), then picks the test command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from agent_core.llm.types import (
    Message,
    ModelRequest,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    TurnEnd,
    Usage,
)

HELP = """\
I'm Kite's built-in local router: I run on this device without a language model, so I \
understand only simple commands:

  /read PATH [START-END]   show a file             (or: open README.md)
  /ls [PATH]               list files              (or: list files in src)
  /grep PATTERN [PATH]     search file contents    (or: search for TODO)
  /glob PATTERN            find files by name      (or: find files named *.py)
  /run COMMAND             run a shell command     (or: run the tests)
  /diff                    what I changed in this session
  /undo                    revert my last step's file changes
  /redo                    re-apply what /undo reverted

To have an agent plan and make changes, configure a model, e.g. \
`kite run --model openai/<model> ...` or `--model anthropic/<model>`."""

# Project files that say how to run the tests, in order of preference.
TEST_PROBES: tuple[tuple[str, str], ...] = (
    ("pyproject.toml", "python3 -m pytest -q"),
    ("pytest.ini", "python3 -m pytest -q"),
    ("setup.py", "python3 -m pytest -q"),
    ("tox.ini", "python3 -m pytest -q"),
    ("package.json", "npm test"),
    ("Cargo.toml", "cargo test"),
    ("go.mod", "go test ./..."),
    ("Makefile", "make test"),
)


@dataclass
class Intent:
    kind: str  # read, list, grep, glob, run, tests, diff, undo, redo, help, unknown
    args: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    note: str = ""


# -- parsing --------------------------------------------------------------------------------

_POLITE = re.compile(
    r"^(?:(?:please|pls|kite|hey|ok|okay)[,!]?\s+|(?:can|could|would|will) you\s+|"
    r"i (?:want|would like|'d like) (?:you )?to\s+|let'?s\s+)+",
    re.I,
)
_RANGE = re.compile(r"^(\d+)\s*(?:[-:]|\.\.|to)\s*(\d+)$|^(\d+)$")
_PATHLIKE = re.compile(r"^[\w.@~+-][\w./@~+-]*$")


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "`'\"":
        return s[1:-1]
    return s


def _looks_like_path(token: str) -> bool:
    return bool(_PATHLIKE.match(token)) and ("." in token or "/" in token)


def _read_args(spec: str) -> list[dict[str, Any]] | None:
    """`README.md`, `a.py lines 10-20`, `a.py:10-20`, `a.py and b.py` → read arguments."""
    spec = spec.strip()
    m = re.match(
        r"^(.*?)\s+(?:lines?\s+|from line\s+|at line\s+)?(\d+\s*(?:-|:|\.\.|to)\s*\d+|\d+)$",
        spec,
        re.I,
    )
    rng = None
    if m and (m.group(1).strip()):
        spec, rng = m.group(1), m.group(2)
    else:
        m = re.match(r"^(\S+?):(\d+(?:-\d+)?)$", spec)
        if m:
            spec, rng = m.group(1), m.group(2)
    paths = [_unquote(p) for p in re.split(r"\s*(?:,|\band\b|\s)\s*", spec) if p.strip()]
    if not paths or not all(_looks_like_path(p) or spec.startswith(("`", "'", '"')) for p in paths):
        return None
    out = []
    for p in paths:
        args: dict[str, Any] = {"file_path": p}
        if rng:
            r = _RANGE.match(re.sub(r"\s+", "", rng.replace("to", "-")))
            if r:
                start = int(r.group(1) or r.group(3))
                end = int(r.group(2)) if r.group(2) else None
                args["offset"] = max(start, 1)
                if end is not None:
                    args["limit"] = max(end - start + 1, 1)
        out.append(args)
    return out


def _slash(text: str) -> Intent | None:
    cmd, _, rest = text[1:].partition(" ")
    cmd = cmd.lower()
    rest = rest.strip()
    if cmd in ("read", "open", "cat", "show", "view"):
        if not rest:
            return Intent("unknown", note="Usage: /read PATH [START-END]")
        reads = _read_args(rest) or [{"file_path": _unquote(rest)}]
        return Intent("read", calls=[("read", a) for a in reads])
    if cmd in ("ls", "list", "tree", "dir"):
        return Intent("list", calls=[("list", {"path": _unquote(rest)} if rest else {})])
    if cmd in ("grep", "search", "rg"):
        if not rest:
            return Intent("unknown", note="Usage: /grep PATTERN [PATH]")
        try:
            words = shlex.split(rest)
        except ValueError:
            words = [rest]
        args = {"pattern": words[0]}
        if len(words) > 1:
            args["path"] = words[1]
        return Intent("grep", calls=[("grep", args)])
    if cmd in ("glob", "find", "files"):
        if not rest:
            return Intent("unknown", note="Usage: /glob PATTERN")
        return Intent("glob", calls=[("glob", {"pattern": _unquote(rest)})])
    if cmd in ("run", "sh", "bash", "exec", "!"):
        if not rest:
            return Intent("unknown", note="Usage: /run COMMAND")
        return Intent("run", calls=[("bash", {"command": _unquote(rest)})])
    if cmd in ("test", "tests"):
        return _tests_intent()
    if cmd == "diff":
        return Intent("diff", calls=[("diff", {})])
    if cmd == "undo":
        return Intent("undo", calls=[("undo", {})])
    if cmd == "redo":
        return Intent("redo", calls=[("redo", {})])
    if cmd in ("help", "?", "commands"):
        return Intent("help")
    return None


def _tests_intent() -> Intent:
    # `./name` anchors the glob at the workspace root: one cheap look per file, in parallel.
    probes = [("glob", {"pattern": f"./{name}"}) for name, _ in TEST_PROBES]
    return Intent("tests", calls=probes)


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("".join(parts), re.I)


_HELP_RX = _rx(r"^(?:help|\?|commands|what can you do|what do you do|how do i use (?:you|this))$")
_UNDO_RX = _rx(
    r"^(?:undo|revert)(?: (?:the|that|your|my))?(?: last| previous)?",
    r"(?: (?:change|edit|edits|changes))?$",
)
_REDO_RX = _rx(
    r"^(?:redo|reapply|re-apply)(?: (?:the|that|your|my))?(?: last)?(?: (?:change|undo))?$"
)
_DIFF_RX = _rx(
    r"^(?:(?:show|give)(?: me)? )?(?:the |your )?(?:diff|changes)(?: so far)?$",
    r"|^what (?:did you change|(?:has )?changed|have you changed)$",
)
_TESTS_RX = _rx(
    r"^(?:run|execute|start)(?: the| all(?: the)?)?(?: unit)? tests?(?: suite)?$|^tests?$"
)
_RUN_RX = _rx(r"^(?:run|execute|exec)(?: the command)?[: ]\s*(.+)$|^\$\s*(.+)$")
_GLOB_RX = _rx(
    r"^(?:find|list|show)(?: me)?(?: all)?(?: the)? files? (?:named|called|matching|like) (.+)$",
    r"|^(?:find|glob)(?: all)? (\S*[*?]\S*)$",
)
_GREP_RX = _rx(
    r"^(?:search|grep|look|find|where is|where's)(?: for)?(?: the)? (.+?)(?: in (\S+))?",
    r"(?: (?:defined|used|mentioned))?$",
)
_READ_RX = _rx(
    r"^(?:open|read|show|cat|view|display|print|look at)(?: me)?(?: the)?",
    r"(?: file| contents of)? (.+)$",
)
_LIST_RX = _rx(
    r"^(?:ls|dir|tree|list|show(?: me)?)(?: all)?(?: the)?",
    r"(?: files?| contents| directory| folder| dir)?(?: (?:in|of|under|inside))?(?: the)?",
    r"(?: (\S+))?$",
    r"|^what(?:'s| is| files are)(?: there)? in (\S+)$|^what files are (?:here|there)$",
)
_HERE = ("here", "there", "this", "directory", "folder", "workspace", "project", "files", "file")


def _natural(text: str) -> Intent | None:
    t = _POLITE.sub("", text.strip()).strip().rstrip(".!?").strip()
    if _HELP_RX.match(t):
        return Intent("help")
    if _UNDO_RX.match(t):
        return Intent("undo", calls=[("undo", {})])
    if _REDO_RX.match(t):
        return Intent("redo", calls=[("redo", {})])
    if _DIFF_RX.match(t):
        return Intent("diff", calls=[("diff", {})])
    if _TESTS_RX.match(t):
        return _tests_intent()
    if m := _RUN_RX.match(t):
        command = _unquote(m.group(1) or m.group(2))
        if re.match(r"^(?:the |all |unit )*tests?\b", command, re.I):  # "run tests in x"
            return _tests_intent()
        return Intent("run", calls=[("bash", {"command": command})])
    if m := _GLOB_RX.match(t):
        return Intent("glob", calls=[("glob", {"pattern": _unquote(m.group(1) or m.group(2))})])
    m = _GREP_RX.match(t)
    if m and not re.match(r"^(?:file|files)\b", m.group(1), re.I):
        args: dict[str, Any] = {"pattern": re.escape(_unquote(m.group(1)))}
        if m.group(2):
            args["path"] = _unquote(m.group(2))
        return Intent("grep", calls=[("grep", args)])
    if (m := _READ_RX.match(t)) and (reads := _read_args(m.group(1))):
        return Intent("read", calls=[("read", a) for a in reads])
    if m := _LIST_RX.match(t):
        path = next((g for g in m.groups() if g), "")
        path = "" if path.lower() in _HERE else _unquote(path)
        return Intent("list", calls=[("list", {"path": path} if path else {})])
    return None


def route(text: str) -> Intent:
    """The intent of a user message: deterministic, no model."""
    t = text.strip()
    if not t:
        return Intent("unknown", note="Say what to do, e.g. /ls or open README.md.")
    if t.startswith("/"):
        return _slash(t) or Intent("unknown", note=f"Unknown command {t.split()[0]!r}.")
    return _natural(t) or Intent("unknown")


# -- the provider ---------------------------------------------------------------------------


def _strip_numbers(text: str) -> str:
    """`read` output without its `cat -n` prefixes: the file's own text, for a person."""
    out = []
    for line in text.split("\n"):
        m = re.match(r"^ *\d+\t(.*)$", line, re.S)
        out.append(m.group(1) if m else line)
    return "\n".join(out)


class LocalProvider:
    """The on-device router as a `Provider`. Deterministic: same conversation, same turn."""

    name = "local"

    def handles(self, text: str) -> bool:
        """True for slash commands it knows (the loop routes those here whatever the model)."""
        return text.strip().startswith("/") and _slash(text.strip()) is not None

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        message, stop = self.respond(request.messages)
        if message.text():
            yield TextDelta(message.text())
        yield TurnEnd(message, stop, Usage())

    def respond(self, messages: list[Message]) -> tuple[Message, Any]:
        """The next assistant message for this conversation, and its stop reason."""
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        if last_user < 0:
            return Message("assistant", [TextPart(HELP)]), "end_turn"
        since = messages[last_user + 1 :]
        turn = sum(1 for m in messages if m.role == "assistant")
        if not since:
            intent = route(messages[last_user].text())
            if not intent.calls:  # help is an answer; anything else it cannot do
                stop = "end_turn" if intent.kind == "help" else "error"
                return Message("assistant", [TextPart(self._explain(intent))]), stop
            return self._calls(turn, intent.kind, intent.calls), "tool_use"
        # We have called tools: look at the last batch and its results.
        calls = next((m.tool_calls() for m in reversed(since) if m.role == "assistant"), [])
        results = {
            p.call_id: p
            for m in since
            if m.role == "tool"
            for p in m.parts
            if isinstance(p, ToolResultPart)
        }
        if calls and all("_tests_probe" in c.id for c in calls):
            return self._after_probes(turn, calls, results)
        return Message("assistant", [TextPart(self._summarise(calls, results))]), "end_turn"

    @staticmethod
    def _calls(turn: int, kind: str, calls: list[tuple[str, dict[str, Any]]]) -> Message:
        tag = "tests_probe" if kind == "tests" else kind
        parts: list[Any] = [
            ToolCallPart(f"local_{turn}_{i}_{tag}", name, dict(args))
            for i, (name, args) in enumerate(calls)
        ]
        return Message("assistant", parts)

    def _explain(self, intent: Intent) -> str:
        if intent.kind == "help":
            return HELP
        lead = intent.note or (
            "I can't do that: without a configured model I only understand simple commands, "
            "not free-form requests."
        )
        return f"{lead}\n\n{HELP}"

    def _after_probes(
        self, turn: int, calls: list[ToolCallPart], results: dict[str, ToolResultPart]
    ) -> tuple[Message, Any]:
        found = []
        for c in calls:
            r = results.get(c.id)
            if r and not r.is_error and r.content.strip() and r.content != "No files found":
                found.append(str(c.arguments.get("pattern", "")).removeprefix("./"))
        for name, command in TEST_PROBES:
            if name in found:
                msg = self._calls(turn, "tests_run", [("bash", {"command": command})])
                msg.parts.insert(0, TextPart(f"Found {name}: running `{command}`.\n"))
                return msg, "tool_use"
        text = (
            "I couldn't tell how to run the tests here: none of "
            + ", ".join(n for n, _ in TEST_PROBES)
            + " is at the top of the workspace. Tell me the command: /run <command>"
        )
        return Message("assistant", [TextPart(text)]), "error"

    def _summarise(self, calls: list[ToolCallPart], results: dict[str, ToolResultPart]) -> str:
        blocks = []
        for c in calls:
            r = results.get(c.id)
            if r is None:
                blocks.append(f"{c.name}: no result.")
                continue
            body = r.content
            if c.name == "read" and not r.is_error:
                body = _strip_numbers(body)
                if "\n(End of file: " in body:  # a whole file shows as itself
                    body = body.rsplit("\n(End of file: ", 1)[0].rstrip("\n")
                path = c.arguments.get("file_path", "")
                body = re.sub(  # the model's hint, as the command a person would type
                    r"\(Showing lines (\d+)-(\d+) of (\d+)\. Use offset=(\d+) to read more\.\)",
                    lambda m, p=path: f"(lines {m[1]}-{m[2]} of {m[3]}; more: /read {p} {m[4]})",
                    body,
                )
            if r.is_error:
                body = f"{c.name} failed: {body}"
            if c.name == "bash" and not r.is_error and "tests_run" in c.id:
                body = f"$ {c.arguments.get('command')}\n{body}"
            if len(calls) > 1 and c.name == "read" and not r.is_error:
                body = f"==> {c.arguments.get('file_path')} <==\n{body}"
            blocks.append(body)
        return "\n\n".join(blocks)
