"""allow / ask / deny for tool calls, opencode style: the user's convenience on the device.

The bridge's host policy is the security boundary; these rules only decide whether the agent may
go ahead on its own, must ask the user first, or must not try. A rule is (permission, pattern,
action); permissions are tool names with `write`/`apply_patch` folded into `edit`, plus
`doom_loop`. Patterns are wildcards over the call's subject (a workspace path, or one simple
command of a `bash` command line). **The last matching rule wins**, as in opencode, so specific
rules go after general ones. Config in opencode's shape:

    {"edit": "ask", "bash": {"*": "ask", "git status*": "allow", "rm *": "deny"}}
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

Action = Literal["allow", "ask", "deny"]
ACTIONS: tuple[Action, ...] = ("allow", "ask", "deny")
_STRICTNESS = {"allow": 0, "ask": 1, "deny": 2}

# Tools that share a permission key (opencode: every file change is `edit`).
PERMISSION_ALIASES = {"write": "edit", "apply_patch": "edit", "patch": "edit", "multiedit": "edit"}


@dataclass(frozen=True)
class Rule:
    permission: str  # wildcard over permission keys ("*" for all)
    pattern: str  # wildcard over the subject
    action: Action


# opencode's defaults: read-only tools and edits go ahead, commands ask, env files ask,
# a call repeated three times asks.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("*", "*", "allow"),
    Rule("bash", "*", "ask"),
    Rule("doom_loop", "*", "ask"),
    Rule("read", "*.env", "ask"),
    Rule("read", "*.env.*", "ask"),
    Rule("read", "*.env.example", "allow"),
)


@lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str]:
    # `*` any run of characters (also `/` and spaces), `?` one character. A trailing " *" also
    # matches nothing, so "ls *" allows a bare "ls" too.
    optional_tail = pattern.endswith(" *")
    body = pattern[:-2] if optional_tail else pattern
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in body)
    if optional_tail:
        rx += "( .*)?"
    return re.compile(rx, re.DOTALL)


def wildcard_match(pattern: str, text: str) -> bool:
    return _compile(pattern).fullmatch(text) is not None


def permission_key(tool: str) -> str:
    return PERMISSION_ALIASES.get(tool, tool)


class ConfigError(ValueError):
    """A permission config that cannot be used (the message names the bad entry)."""


def rules_from_config(config: dict[str, Any]) -> list[Rule]:
    """Rules from opencode's shape; the order of the config is the order of the rules."""
    if not isinstance(config, dict):
        raise ConfigError("permission config must be an object")
    out: list[Rule] = []
    for perm, value in config.items():
        key = permission_key(str(perm))
        entries = {"*": value} if isinstance(value, str) else value
        if not isinstance(entries, dict):
            raise ConfigError(f'permission.{perm}: use "allow"/"ask"/"deny" or an object')
        for pattern, action in entries.items():
            if action not in ACTIONS:
                raise ConfigError(
                    f"permission.{perm}[{pattern!r}]: {action!r} is not allow, ask or deny"
                )
            out.append(Rule(key, str(pattern), action))
    return out


@dataclass
class Ruleset:
    rules: list[Rule] = field(default_factory=lambda: list(DEFAULT_RULES))

    def evaluate(self, permission: str, subject: str) -> Action:
        key = permission_key(permission)
        for rule in reversed(self.rules):
            if wildcard_match(rule.permission, key) and wildcard_match(rule.pattern, subject):
                return rule.action
        return "ask"

    def evaluate_all(self, permission: str, subjects: Iterable[str]) -> Action:
        """The strictest answer over several subjects (every command of a pipeline, every path)."""
        worst: Action = "allow"
        for s in subjects:
            a = self.evaluate(permission, s)
            if _STRICTNESS[a] > _STRICTNESS[worst]:
                worst = a
        return worst

    def add(self, rule: Rule) -> None:
        self.rules.append(rule)


# -- bash command lines -------------------------------------------------------------------

_SEPARATORS = ("&&", "||", ";", "|", "&", "\n")


def bash_subjects(command: str) -> list[str]:
    """The simple commands of a shell command line, each checked on its own.

    `ls && rm -rf build` must not pass as "ls *". Splits on `&& || ; | & newline` outside
    quotes, and adds what runs inside `$(...)` and backticks. A heuristic, not a shell parser:
    the bridge's policy is the boundary.
    """
    parts: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(command):
        c = command[i]
        if quote:
            buf.append(c)
            if c == "\\" and quote == '"' and i + 1 < len(command):
                buf.append(command[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
            i += 1
            continue
        if c in ("'", '"'):
            quote = c
            buf.append(c)
            i += 1
            continue
        if c == "\\" and i + 1 < len(command):
            buf.append(command[i : i + 2])
            i += 2
            continue
        sep = next((s for s in _SEPARATORS if command.startswith(s, i)), None)
        if sep:
            parts.append("".join(buf))
            buf = []
            i += len(sep)
            continue
        buf.append(c)
        i += 1
    parts.append("".join(buf))
    inner = re.findall(r"\$\(([^()]*)\)|`([^`]*)`", command)
    for a, b in inner:
        parts.extend(bash_subjects(a or b))
    out = []
    for p in parts:
        p = " ".join(p.split())
        p = p.lstrip("({ ").rstrip(")} ")
        if p and p not in out:
            out.append(p)
    return out or [command.strip()]


# Commands whose second word says what they do ("git push" vs "git status").
# fmt: off
_TWO_WORD = frozenset({
    "git", "npm", "pnpm", "yarn", "bun", "npx", "cargo", "go", "docker", "kubectl", "pip", "pip3",
    "uv", "poetry", "make", "systemctl", "apt", "apt-get", "brew", "gh", "dotnet", "mvn", "gradle",
    "rustup", "conda", "helm", "terraform",
})
# fmt: on


def always_pattern(permission: str, subject: str) -> str:
    """What an "always" answer allows from now on: the command's prefix, or everything."""
    if permission_key(permission) != "bash":
        return "*"
    words = subject.split()
    if not words:
        return "*"
    n = 2 if words[0] in _TWO_WORD and len(words) > 1 and not words[1].startswith("-") else 1
    return " ".join(words[:n]) + " *"


# -- asking -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PermissionRequest:
    """What the UI shows when a call needs the user's approval."""

    permission: str  # "bash", "edit", "doom_loop", ...
    patterns: list[str]  # the subjects: commands, paths
    tool: str
    call_id: str
    title: str  # one line for a person: "Run `pytest -q`", "Edit src/app.py"
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. {"diff": ...}


@dataclass(frozen=True)
class PermissionReply:
    kind: Literal["once", "always", "reject"]
    message: str | None = None  # with "reject": guidance passed to the model


ApproveFn = Callable[[PermissionRequest], Awaitable[PermissionReply]]


class PermissionDenied(Exception):
    """A rule denies the call; the message is for the model."""


class PermissionRefused(Exception):
    """The call needed approval and nobody can give it (a non-interactive run)."""


class PermissionRejected(Exception):
    """The user said no. `feedback`, if any, goes to the model and the loop continues."""

    def __init__(self, message: str, feedback: str | None) -> None:
        super().__init__(message)
        self.feedback = feedback


@dataclass(frozen=True)
class Refusal:
    tool: str
    permission: str
    subject: str


class PermissionGate:
    """Rules + the shell's approval callback. `approve=None` means nobody can answer.

    `yes=True` (`kite run --yes`) turns every "ask" into "allow"; "deny" stays "deny".
    Prompts are serialised: parallel tool calls never ask the user at the same time.
    """

    def __init__(
        self, ruleset: Ruleset | None = None, *, approve: ApproveFn | None = None, yes: bool = False
    ) -> None:
        self.ruleset = ruleset or Ruleset()
        self.approve = approve
        self.yes = yes
        self.refusals: list[Refusal] = []
        self._lock = asyncio.Lock()

    def decide(self, permission: str, patterns: list[str]) -> Action:
        action = self.ruleset.evaluate_all(permission, patterns or ["*"])
        if action == "ask" and self.yes:
            return "allow"
        return action

    async def check(self, request: PermissionRequest) -> None:
        """Return if the call may go ahead; raise PermissionDenied/Refused/Rejected otherwise."""
        action = self.decide(request.permission, request.patterns)
        if action == "allow":
            return
        subject = ", ".join(request.patterns)
        if action == "deny":
            raise PermissionDenied(
                f"denied by the user's permission rules ({request.permission}: {subject}); "
                "do not retry this call"
            )
        if self.approve is None:
            self.refusals.append(Refusal(request.tool, request.permission, subject))
            raise PermissionRefused(
                f"not run: {request.permission} `{subject}` needs the user's approval and this "
                "session is non-interactive (the user can allow it with --yes)"
            )
        async with self._lock:
            # An earlier prompt may have answered "always" for this very subject.
            if self.decide(request.permission, request.patterns) == "allow":
                return
            reply = await self.approve(request)
        if reply.kind == "once":
            return
        if reply.kind == "always":
            for p in request.patterns or ["*"]:
                self.ruleset.add(
                    Rule(
                        permission_key(request.permission),
                        always_pattern(request.permission, p),
                        "allow",
                    )
                )
            return
        msg = "the user rejected this call"
        if reply.message:
            msg += f" and said: {reply.message}"
        raise PermissionRejected(msg, reply.message)
