"""`model.*` ops: the model-API relay. Keys stay on the host; the device gets the bytes.

`model.stream {"provider": "openai"|"anthropic", "path": <API path>, "body": {...}}`

The host sends `body` (JSON) as a POST to the provider's configured base URL + `path`, adding
the credential headers itself, and streams the response back:

1. event `response` `{"status", "headers"}` as soon as the upstream status line arrives;
2. the body as binary data chunks (raw bytes: no base64, no JSON escaping), ending with a
   FINAL chunk (empty if need be);
3. result `{"status", "headers", "bytes", "complete"}` (+ `"error"` when `complete` is false:
   the upstream connection broke mid-body).

Error statuses (401, 429, 5xx...) are not op errors: status and body pass through so the
device's adapter produces the right ProviderError. Op errors: `EINVAL` (bad arguments, unknown
provider), `EACCES` (path not allowed for the provider, or no key/URL configured on this host),
`EIO` (the provider cannot be reached: connect/TLS failure, timeout before a response).

Security: the client names a provider and a path from a fixed allowlist, never a host, so it
cannot aim the host's key (or the host's network position) anywhere else — no SSRF. The key is
never sent to the device: response headers are reduced to a safe subset, and every byte of the
body passes through a redactor that replaces the configured keys should the upstream echo one
(e.g. in an "incorrect API key" message). Cancelling the request (`cancel`, disconnect) closes
the upstream connection.

Configuration, per provider, read once at first use: the bridge process environment
(`OPENAI_API_KEY`, `OPENAI_BASE_URL`, `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`), then the
host owner's `<user config dir>/bridge.toml`:

    [model.openai]
    api_key = "sk-..."                       # the environment wins when both are set
    base_url = "http://127.0.0.1:11434/v1"   # e.g. Ollama

Never the workspace's `.kite/bridge.toml`: a cloned repository must not be able to redirect the
host's key to a server of its choosing. A provider is usable when it has a key, or an explicit
base URL (a local server that needs no key). The exec op already scrubs these variables from
commands' environments.

`model.info {}` → `{"providers": {name: {"configured", "keyed", "endpoint", "paths"}}}` —
the base URL's origin only, never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent_core.llm import anthropic, openai
from agent_core.llm.http import AsyncioHttpClient, HttpClient, HttpError
from agent_core.rpc.errors import EACCES, EINVAL, EIO, RpcError
from bridge.ops.base import OpContext, arg_str, op

log = logging.getLogger("kite.bridge.model")

_ARGS = frozenset({"provider", "path", "body"})
# Response headers worth passing on (rate limits, retry hints, request ids, content type).
SAFE_HEADERS = frozenset(
    {
        "content-type",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "request-id",
        "x-request-id",
        "openai-processing-ms",
    }
)
SAFE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
REDACTED = b"[REDACTED]"


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    key_env: str
    base_env: str
    default_base: str
    paths: frozenset[str]
    join: Callable[[str, str], str]
    auth: Callable[[str | None], dict[str, str]]


def _anthropic_auth(key: str | None) -> dict[str, str]:
    headers = {"anthropic-version": anthropic.API_VERSION}
    if key:
        headers["x-api-key"] = key
    return headers


SPECS: dict[str, ProviderSpec] = {
    "openai": ProviderSpec(
        "openai",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        openai.DEFAULT_BASE_URL,
        frozenset({openai.PATH}),
        openai.endpoint_url,
        openai.auth_headers,
    ),
    "anthropic": ProviderSpec(
        "anthropic",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        anthropic.DEFAULT_BASE_URL,
        frozenset({anthropic.PATH}),
        anthropic.endpoint_url,
        _anthropic_auth,
    ),
}


@dataclass(frozen=True)
class HostProvider:
    """One provider as this host is configured for it. The key never leaves this process."""

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    problem: str | None = None  # why it cannot be used, for the EACCES message

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def load_host_providers(
    environ: Mapping[str, str], config_file: Path | None
) -> dict[str, HostProvider]:
    """Every provider's host configuration: environment first, then the user config file."""
    table: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as f:
                data = tomllib.load(f)
            model = data.get("model", {})
            table = model if isinstance(model, dict) else {}
        except FileNotFoundError:
            pass
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.warning("ignoring the [model] settings of %s: %s", config_file, exc)
    out: dict[str, HostProvider] = {}
    for name, spec in SPECS.items():
        section = table.get(name, {})
        section = section if isinstance(section, dict) else {}
        key = _str(environ.get(spec.key_env)) or _str(section.get("api_key"))
        explicit_base = _str(environ.get(spec.base_env)) or _str(section.get("base_url"))
        base = explicit_base or spec.default_base
        problem = None
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = f"the host's {spec.base_env} is not an http(s) URL"
        elif not key and not explicit_base:
            problem = (
                f"no {name} API key is configured on the bridge host: set {spec.key_env} "
                f"(or {spec.base_env} for a server that needs no key) in the bridge's "
                f"environment or [model.{name}] in its bridge.toml, then restart it"
            )
        out[name] = HostProvider(name, base, key or None, problem)
    return out


def _str(v: Any) -> str | None:
    # Stripped: a key pasted with its newline would otherwise break the request's headers.
    return (v.strip() or None) if isinstance(v, str) else None


def _user_config_file() -> Path | None:
    try:
        from bridge.statedir import user_config_dir

        return user_config_dir() / "bridge.toml"
    except Exception:  # no config dir on this host: environment only
        return None


# The relay's state: host configuration (loaded once, lazily) and the HTTP client.
_state: dict[str, Any] = {"providers": None, "http": None}


def configure(
    providers: dict[str, HostProvider] | None = None, http: HttpClient | None = None
) -> None:
    """Set (or with no arguments, reset) the relay's configuration. For tests and embedding."""
    _state["providers"] = providers
    _state["http"] = http


async def host_providers() -> dict[str, HostProvider]:
    """The host configuration, loaded off the event loop at first use (a racing second load
    is harmless: same result)."""
    if _state["providers"] is None:
        _state["providers"] = await asyncio.to_thread(
            load_host_providers, dict(os.environ), _user_config_file()
        )
    return _state["providers"]


def _http() -> HttpClient:
    if _state["http"] is None:
        _state["http"] = AsyncioHttpClient()
    return _state["http"]


class Redactor:
    """Replaces secrets in a byte stream cut at arbitrary points, holding back only a tail that
    could be the start of a secret (SSE events end in a newline, so nothing is delayed)."""

    # Real API keys are long random strings. A short value (a local server's placeholder such
    # as "ollama", or "k") is no secret, and replacing it would corrupt ordinary model output.
    MIN_SECRET_LEN = 12

    def __init__(self, secrets: list[bytes]) -> None:
        self.secrets = sorted(
            {s for s in secrets if len(s) >= self.MIN_SECRET_LEN}, key=len, reverse=True
        )
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if not self.secrets:
            return data
        buf = self._held + data
        for s in self.secrets:
            if s in buf:
                buf = buf.replace(s, REDACTED)
        hold = self._partial_suffix(buf)
        self._held = buf[len(buf) - hold :] if hold else b""
        return buf[: len(buf) - hold]

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def _partial_suffix(self, buf: bytes) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some secret."""
        best = 0
        for s in self.secrets:
            start = max(0, len(buf) - len(s) + 1)
            i = buf.find(s[:1], start)
            while i != -1:
                if s.startswith(buf[i:]):
                    best = max(best, len(buf) - i)
                    break
                i = buf.find(s[:1], i + 1)
        return best


def _safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in SAFE_HEADERS or k.startswith(SAFE_PREFIXES)}


@op("model.stream")
async def model_stream(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    unknown = set(args) - _ARGS
    if unknown:
        raise RpcError(EINVAL, f"unknown argument(s): {', '.join(sorted(unknown))}")
    name = arg_str(args, "provider")
    spec = SPECS.get(name)
    if spec is None:
        raise RpcError(EINVAL, f"unknown provider {name!r} (known: {', '.join(sorted(SPECS))})")
    path = arg_str(args, "path")
    if path not in spec.paths:
        allowed = ", ".join(sorted(spec.paths))
        raise RpcError(EACCES, f"path {path[:100]!r} is not relayed for {name} (only {allowed})")
    body = args.get("body")
    if not isinstance(body, dict):
        raise RpcError(EINVAL, "argument 'body' must be a JSON object")
    model = body.get("model")
    ctx.audit.update(
        provider=name, path=path, model=model[:200] if isinstance(model, str) else None
    )
    host = (await host_providers())[name]
    if host.problem is not None:
        raise RpcError(EACCES, host.problem)
    secrets = [p.api_key.encode() for p in (await host_providers()).values() if p.api_key]
    redactor = Redactor(secrets)

    def clean(text: str) -> str:
        r = Redactor(secrets)
        return (r.feed(text.encode()) + r.flush()).decode("utf-8", "replace")

    url = spec.join(host.base_url, path)
    headers = {"Content-Type": "application/json", **spec.auth(host.api_key)}
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        response = await _http().stream("POST", url, headers, payload)
    except HttpError as exc:
        raise RpcError(EIO, clean(f"cannot reach the {name} API: {exc}")) from None
    safe = _safe_headers(response.headers)
    ctx.audit["status"] = response.status
    await ctx.emit("response", {"status": response.status, "headers": safe})
    sent = 0
    error: str | None = None
    async with contextlib.aclosing(response.body) as pieces:  # type: ignore[type-var]
        try:
            async for piece in pieces:
                out = redactor.feed(piece)
                if out:
                    await ctx.send_chunk(out, False)
                    sent += len(out)
        except HttpError as exc:
            error = clean(str(exc))
    tail = redactor.flush()
    await ctx.send_chunk(tail, True)
    sent += len(tail)
    ctx.audit.update(bytes=sent, complete=error is None)
    result: dict[str, Any] = {
        "status": response.status,
        "headers": safe,
        "bytes": sent,
        "complete": error is None,
    }
    if error is not None:
        result["error"] = error
    return result


@op("model.info")
async def model_info(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    providers = await host_providers()
    return {
        "providers": {
            name: {
                "configured": p.usable,
                "keyed": p.api_key is not None,
                "endpoint": p.origin if p.usable else None,
                "paths": sorted(SPECS[name].paths),
            }
            for name, p in providers.items()
        }
    }
