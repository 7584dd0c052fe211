"""Host policy: the hard limits a client cannot change.

Loaded once at start from TOML. Two files are read, both optional:

1. `<user config dir>/bridge.toml` — the host owner's settings;
2. `<workspace>/.kite/bridge.toml` — settings that travel with the project.

Schema: every setting is a flat key under a `[policy]` table. Other top-level tables in the same
file (e.g. server settings) belong to other parts of the bridge and are ignored here; a bare
top-level key is an error (a `read_only = true` written above `[policy]` must not be silently
ignored). Unknown keys and wrong types are errors (`PolicyError`, naming the file and the key).

    [policy]
    read_only = false               # bool: refuse every op that changes the workspace
    exec_enabled = true             # bool: allow exec.* ops
    deny = ["secrets/**"]           # list of gitignore-style globs, ADDED to the built-in list
    env_deny = ["MY_*"]             # list of fnmatch patterns, ADDED to the built-in list
    exec_timeout_default_s = 120    # number > 0
    exec_timeout_max_s = 3600       # number > 0
    exec_output_cap_bytes = 4194304 # int > 0
    exec_kill_grace_s = 2           # number > 0
    read_max_bytes = 268435456      # int > 0
    text_max_bytes = 16777216       # int > 0
    grep_max_results = 2000         # int > 0
    glob_max_results = 10000        # int > 0
    list_max_entries = 10000        # int > 0

Merge rule: the user file sets the baseline (it may loosen a built-in default: it is the host
owner's choice); the workspace file can only make that baseline stricter, because a cloned
repository is not trusted to loosen the host's limits. When both files set a key, the most
restrictive value wins: `read_only` = any true, `exec_enabled` = all true, lists = union,
numbers = minimum. The built-in deny lists can never be shortened, and deny patterns may not start
with `!` (a negation would let one file re-allow what another denies). After merging,
`exec_timeout_default_s` is clamped to `exec_timeout_max_s`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DENY: tuple[str, ...] = (
    ".env",
    ".env.*",
    "**/.env",
    "**/.env.*",
    "**/*.pem",
    "**/*.key",
    "**/*.p12",
    "**/*.pfx",
    "**/id_rsa*",
    "**/id_dsa*",
    "**/id_ecdsa*",
    "**/id_ed25519*",
    "**/.netrc",
    "**/.pypirc",
    "**/.npmrc",
    "**/.ssh/**",
    "**/.aws/**",
    "**/.gnupg/**",
    "**/.git-credentials",
    ".kite/bridge.toml",
)

# Environment variables never passed to commands (fnmatch patterns, case-insensitive).
DEFAULT_ENV_DENY: tuple[str, ...] = (
    "*KEY*",
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*_AUTH*",
    "AWS_*",
    "AZURE_*",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "OPENAI_*",
    "ANTHROPIC_*",
    "SSH_AUTH_SOCK",
    "KITE_*",
)

POLICY_TABLE = "policy"
USER_POLICY_FILE = "bridge.toml"
WORKSPACE_POLICY_FILE = ".kite/bridge.toml"


@dataclass
class Policy:
    read_only: bool = False
    exec_enabled: bool = True
    deny: tuple[str, ...] = DEFAULT_DENY  # workspace-relative globs, gitignore-style
    env_deny: tuple[str, ...] = DEFAULT_ENV_DENY
    exec_timeout_default_s: float = 120.0
    exec_timeout_max_s: float = 3600.0
    exec_output_cap_bytes: int = 4 * 1024 * 1024  # per request, stdout+stderr together
    exec_kill_grace_s: float = 2.0  # SIGTERM → SIGKILL delay
    read_max_bytes: int = 256 * 1024 * 1024  # fs.read (chunked) cap
    text_max_bytes: int = 16 * 1024 * 1024  # fs.read/fs.write as JSON text
    grep_max_results: int = 2000
    glob_max_results: int = 10000
    list_max_entries: int = 10000
    sources: list[str] = field(default_factory=list)  # files it was loaded from, for `kite serve`


class PolicyError(ValueError):
    """A policy file that cannot be used. The bridge refuses to start rather than guess."""


_BOOL_ANY_TRUE = frozenset({"read_only"})
_BOOL_ALL_TRUE = frozenset({"exec_enabled"})
_LISTS = frozenset({"deny", "env_deny"})
_INTS = frozenset(
    {
        "exec_output_cap_bytes",
        "read_max_bytes",
        "text_max_bytes",
        "grep_max_results",
        "glob_max_results",
        "list_max_entries",
    }
)
_FLOATS = frozenset({"exec_timeout_default_s", "exec_timeout_max_s", "exec_kill_grace_s"})
KNOWN_KEYS = _BOOL_ANY_TRUE | _BOOL_ALL_TRUE | _LISTS | _INTS | _FLOATS
assert {f.name for f in fields(Policy)} - {"sources"} == KNOWN_KEYS


def _check_value(source: str, key: str, value: Any) -> Any:
    """Validate one `[policy]` value and return it in the form Policy stores."""
    where = f"{source}: [policy] {key}"
    if key in _BOOL_ANY_TRUE or key in _BOOL_ALL_TRUE:
        if not isinstance(value, bool):
            raise PolicyError(f"{where} must be true or false, not {type(value).__name__}")
        return value
    if key in _LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f"{where} must be a list of strings")
        for v in value:
            if not v.strip():
                raise PolicyError(f"{where} contains an empty pattern")
            if key == "deny" and v.lstrip().startswith("!"):
                raise PolicyError(
                    f"{where}: negated pattern {v!r} is not allowed (deny lists only add)"
                )
        if key == "deny":
            _check_globs(where, value)
        return tuple(value)
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{where} must be an integer, not {type(value).__name__}")
        if value <= 0:
            raise PolicyError(f"{where} must be > 0")
        return value
    if key in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(f"{where} must be a number, not {type(value).__name__}")
        if not math.isfinite(value) or value <= 0:
            raise PolicyError(f"{where} must be a finite number > 0")
        return float(value)
    raise PolicyError(f"{source}: unknown key '{key}' in [policy] (known: {sorted(KNOWN_KEYS)})")


def _check_globs(where: str, patterns: list[str]) -> None:
    import pathspec  # bridge-only dependency; imported here so agent_core never pulls it in

    try:
        pathspec.GitIgnoreSpec.from_lines(patterns)
    except Exception as exc:  # pathspec raises several types for bad patterns
        raise PolicyError(f"{where}: bad pattern: {exc}") from exc


def read_policy_file(path: Path) -> dict[str, Any] | None:
    """Parse and validate one policy file. None when it does not exist."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PolicyError(f"{source}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{source}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: invalid TOML: {exc}") from exc
    for key, value in data.items():
        if not isinstance(value, dict):
            raise PolicyError(
                f"{source}: top-level key '{key}' is not allowed; policy settings go under [policy]"
            )
    table = data.get(POLICY_TABLE, {})
    return {key: _check_value(source, key, value) for key, value in table.items()}


def _stricter(key: str, a: Any, b: Any) -> Any:
    if key in _BOOL_ANY_TRUE:
        return a or b
    if key in _BOOL_ALL_TRUE:
        return a and b
    if key in _LISTS:
        return tuple(dict.fromkeys((*a, *b)))
    return min(a, b)


def merge(base: Policy, settings: dict[str, Any], *, restrict_only: bool) -> Policy:
    """Apply validated settings to `base`.

    Lists always extend `base`. With `restrict_only`, every other value can only tighten `base`;
    without it a value replaces `base` (the host owner's file over the built-in defaults).
    """
    changes: dict[str, Any] = {}
    for key, value in settings.items():
        current = getattr(base, key)
        if key in _LISTS or restrict_only:
            changes[key] = _stricter(key, current, value)
        else:
            changes[key] = value
    return replace(base, **changes)


def load_policy(workspace_root: Path, user_config_dir: Path | None) -> Policy:
    """Load and merge the user's and the workspace's policy files (most restrictive wins)."""
    policy = Policy()
    sources: list[str] = []
    if user_config_dir is not None:
        path = Path(user_config_dir) / USER_POLICY_FILE
        settings = read_policy_file(path)
        if settings is not None:
            policy = merge(policy, settings, restrict_only=False)
            sources.append(str(path))
    path = Path(workspace_root) / WORKSPACE_POLICY_FILE
    settings = read_policy_file(path)
    if settings is not None:
        policy = merge(policy, settings, restrict_only=True)
        sources.append(str(path))
    if policy.exec_timeout_default_s > policy.exec_timeout_max_s:
        policy = replace(policy, exec_timeout_default_s=policy.exec_timeout_max_s)
    policy.sources = sources
    return policy
