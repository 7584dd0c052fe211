"""Host policy: the hard limits a client cannot change.

Loaded once at start from TOML (`<user config dir>/bridge.toml`, then `<workspace>/.kite/bridge.toml`).
Sources merge so that the most restrictive value wins; see docs/security.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
