"""Sandbox policy shared by both engines: limits, the memory budget, the HTTP allowlist, the
scratch directory. Pure decisions, no I/O except the optional stdlib HTTP client.

Limits come from two places: the plugin's manifest asks (memory.max_pages, timeout_ms, ...),
the host's `HostLimits` caps what any plugin may get. The effective value is the smaller one, so
a manifest can tighten its own sandbox but never loosen the host's.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol
from urllib.parse import urlsplit

from agent_core.plugins.wasmbin import PAGE

MIB = 1024 * 1024


class PluginError(Exception):
    """A plugin could not be loaded or a call failed; `code` is a wire error code.

    `kind` says what happened, so callers (and the conformance tests) can compare outcomes
    across engines without parsing messages: "error" (the plugin reported an error), "trap",
    "timeout", "memory", "forbidden", "too_big", "exit", "missing", "invalid", "load",
    "hash", "signature", "untrusted".
    """

    CODES: ClassVar[dict[str, str]] = {
        "timeout": "ETIMEDOUT",
        "forbidden": "EACCES",
        "untrusted": "EACCES",
        "signature": "EACCES",
        "hash": "EACCES",
        "too_big": "ETOOBIG",
        "missing": "ENOENT",
        "invalid": "EINVAL",
    }

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def code(self) -> str:
        return self.CODES.get(self.kind, "EPLUGIN")


@dataclass(frozen=True)
class HostLimits:
    """The most any plugin gets on this host (the user's config may lower these)."""

    memory_bytes: int = 128 * MIB
    timeout_ms: int = 10_000
    max_input_bytes: int = 16 * MIB
    max_output_bytes: int = 4 * MIB
    max_log_bytes: int = 64 * 1024
    max_error_bytes: int = 16 * 1024
    max_http_response_bytes: int = 4 * MIB
    max_var_bytes: int = 1 * MIB
    table_elements: int = 100_000
    scratch_bytes: int = 64 * MIB  # the plugin's files, on disk (host) or in memory (browser)


@dataclass(frozen=True)
class Limits:
    """The limits one plugin instance runs under."""

    memory_bytes: int
    timeout_ms: int
    max_input_bytes: int
    max_output_bytes: int
    max_log_bytes: int
    max_error_bytes: int
    max_http_response_bytes: int
    max_var_bytes: int
    table_elements: int
    scratch_bytes: int = 64 * MIB

    @classmethod
    def effective(
        cls,
        host: HostLimits,
        *,
        max_pages: int | None = None,
        timeout_ms: int | None = None,
        max_http_response_bytes: int | None = None,
        max_var_bytes: int | None = None,
    ) -> Limits:
        """The manifest's requests, each capped by the host's limit."""

        def cap(asked: int | None, ceiling: int) -> int:
            return ceiling if asked is None else max(0, min(asked, ceiling))

        return cls(
            memory_bytes=cap(None if max_pages is None else max_pages * PAGE, host.memory_bytes),
            timeout_ms=cap(timeout_ms, host.timeout_ms),
            max_input_bytes=host.max_input_bytes,
            max_output_bytes=host.max_output_bytes,
            max_log_bytes=host.max_log_bytes,
            max_error_bytes=host.max_error_bytes,
            max_http_response_bytes=cap(max_http_response_bytes, host.max_http_response_bytes),
            max_var_bytes=cap(max_var_bytes, host.max_var_bytes),
            table_elements=host.table_elements,
            scratch_bytes=host.scratch_bytes,
        )


def memory_plan(memory_bytes: int, guest_memories: int) -> tuple[int, list[int]]:
    """Split a plugin's memory budget into page maxima: (kernel, [each guest memory]).

    The kernel holds input, output, vars and HTTP bodies; it gets a quarter of the budget (at
    least 1 MiB). The guest's memories share the rest equally. The sum never exceeds the budget,
    so the cap holds over all of a plugin's memories, whatever each one does.
    """
    total = memory_bytes // PAGE
    if total < 2 + guest_memories:
        raise PluginError(f"a memory limit of {memory_bytes} bytes is too small", "invalid")
    kernel = min(max(16, total // 4), total - guest_memories)
    rest = total - kernel
    if guest_memories == 0:
        return kernel, []
    return kernel, [rest // guest_memories] * guest_memories


def host_allowed(url: str, allowed_hosts: list[str] | None) -> bool:
    """Whether an HTTP(S) URL's host matches the plugin's allowlist (glob patterns, as Extism:
    `example.com`, `*.example.com`, `*`). No allowlist means no network."""
    if not allowed_hosts:
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allowed_hosts)


def scratch_preopens(
    scratch_dir: Path | None, allowed_paths: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Map a manifest's `allowed_paths` (scratch-relative host path -> guest path) to host
    directories, refusing any that would leave the plugin's scratch directory. Without a scratch
    directory (the browser) the host side is "": the plugin's in-memory file system."""
    root = None if scratch_dir is None else scratch_dir.resolve()
    out = []
    for rel, guest in allowed_paths.items():
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise PluginError(
                f"allowed_paths entry {rel!r} is outside the plugin's scratch directory "
                "(use a path relative to it, such as '.')",
                "forbidden",
            )
        if not str(guest).startswith("/"):
            raise PluginError(f"guest path {guest!r} must be absolute", "invalid")
        if root is None:
            out.append(("", str(guest)))
            continue
        host = (root / rel).resolve()
        if host != root and root not in host.parents:
            msg = f"allowed_paths entry {rel!r} leaves the scratch directory"
            raise PluginError(msg, "forbidden")
        host.mkdir(parents=True, exist_ok=True)
        out.append((str(host), str(guest)))
    return out


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: dict[str, str]


class HttpClient(Protocol):
    """Performs one plugin HTTP request after the host has checked the allowlist."""

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
        max_bytes: int,
        allowed_hosts: list[str],
    ) -> HttpResponse:
        """Raise `PluginError` on failure; redirects must stay on allowed hosts."""


class UrllibHttpClient:
    """The stdlib client (CPython). Follows redirects only to allowed hosts."""

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
        max_bytes: int,
        allowed_hosts: list[str],
    ) -> HttpResponse:
        import urllib.error
        import urllib.request

        class Redirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, hdrs, newurl):  # type: ignore[no-untyped-def]
                if not host_allowed(newurl, allowed_hosts):
                    raise PluginError(
                        f"HTTP redirect to {newurl} is not allowed (host not in allowed_hosts)",
                        "forbidden",
                    )
                return super().redirect_request(req, fp, code, msg, hdrs, newurl)

        opener = urllib.request.build_opener(Redirects, urllib.request.ProxyHandler({}))
        req = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
        try:
            resp = opener.open(req, timeout=max(0.001, timeout_s))
        except urllib.error.HTTPError as exc:
            resp = exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PluginError(f"HTTP request to {url} failed: {reason}", "error") from None
        with resp:
            data = resp.read(max_bytes + 1)
            status = resp.status if hasattr(resp, "status") else resp.code
            hdrs = {k.lower(): v for k, v in resp.headers.items()}
        if len(data) > max_bytes:
            raise PluginError(
                f"HTTP response from {url} exceeds the plugin's limit of {max_bytes} bytes",
                "too_big",
            )
        return HttpResponse(int(status), data, hdrs)
