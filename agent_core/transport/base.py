"""The transport seam: a message-oriented, ordered, reliable byte pipe (a WebSocket)."""

from __future__ import annotations

from typing import Protocol


class TransportClosed(ConnectionError):
    """The peer or the network closed the transport."""


class ByteTransport(Protocol):
    async def send(self, data: bytes) -> None:
        """Send one binary message. Raises TransportClosed."""

    async def recv(self) -> bytes:
        """Receive one binary message. Raises TransportClosed."""

    async def close(self) -> None:
        """Close; idempotent."""
