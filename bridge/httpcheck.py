"""Checks made before any WebSocket upgrade: Host (DNS rebinding) and Origin (cross-site use).

A browser page from another site can open a WebSocket to 127.0.0.1; only the Origin header tells
it apart, so a present Origin must be one of the bridge's own (or configured). A DNS-rebinding
attacker's page is same-origin with a hostname that resolves to us, so the Host header must name
this bridge (a known host name or address).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import deque
from urllib.parse import urlsplit

_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def split_host(value: str) -> tuple[str, int | None] | None:
    """Parse a Host header (`name`, `name:port`, `[v6]:port`); None when malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_s = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_s = value.split(":")
    elif ":" in value:  # bare IPv6 without brackets is not a valid Host header
        return None
    else:
        host, port_s = value, ""
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            return None
        return host.rstrip("."), int(port_s)
    return host.rstrip("."), None


def default_allowed_hosts(bind_host: str) -> set[str]:
    hosts = set(_LOCAL_NAMES)
    wildcard = bind_host in ("", "0.0.0.0", "::")
    if not wildcard:
        hosts.add(bind_host.lower().strip("[]"))
        return hosts
    # Bound to every interface: this machine's names and addresses are its own.
    name = socket.gethostname().lower()
    hosts |= {name, f"{name}.local", socket.getfqdn().lower()}
    try:
        for info in socket.getaddrinfo(name, None):
            hosts.add(str(info[4][0]).lower())
    except OSError:
        pass
    return hosts


class OriginPolicy:
    """Decides Host and Origin acceptability for one bridge."""

    def __init__(
        self,
        *,
        bind_host: str,
        port: int,
        tls: bool,
        extra_hosts: list[str] = (),  # type: ignore[assignment]
        extra_origins: list[str] = (),  # type: ignore[assignment]
    ) -> None:
        self.port = port
        self.scheme = "https" if tls else "http"
        self.hosts = default_allowed_hosts(bind_host) | {h.lower().strip("[]") for h in extra_hosts}
        self.origins = {o.rstrip("/").lower() for o in extra_origins}
        for origin in self.origins:  # an allowed origin's host is an allowed Host too (proxies)
            host = urlsplit(origin).hostname
            if host:
                self.hosts.add(host)

    def host_ok(self, header: str | None) -> bool:
        if header is None:
            return False
        parsed = split_host(header)
        return parsed is not None and parsed[0] in self.hosts

    def origin_ok(self, header: str | None) -> bool:
        if header is None:
            return True  # not a browser: nothing to defend against here
        origin = header.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme != self.scheme or parts.path or parts.query or not parts.hostname:
            return False
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        return parts.hostname in self.hosts and port == self.port

    def own_origins(self) -> list[str]:
        out = []
        for host in sorted(self.hosts):
            try:
                shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
            except ValueError:
                shown = host
            out.append(f"{self.scheme}://{shown}:{self.port}")
        return out + sorted(self.origins)


class FailureLimiter:
    """Sliding-window limit on failed handshakes, per peer address and overall."""

    def __init__(self, per_peer: int, overall: int, window_s: float = 60.0) -> None:
        self.per_peer = per_peer
        self.overall = overall
        self.window_s = window_s
        self._events: deque[tuple[float, str]] = deque()

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()

    def note_failure(self, peer: str) -> None:
        now = time.monotonic()
        self._trim(now)
        self._events.append((now, peer))

    def blocked(self, peer: str) -> bool:
        self._trim(time.monotonic())
        if len(self._events) >= self.overall:
            return True
        return sum(1 for _, p in self._events if p == peer) >= self.per_peer
