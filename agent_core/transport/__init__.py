"""Byte transports: the only place bytes meet a socket. One implementation per runtime."""

from agent_core.transport.base import ByteTransport, TransportClosed

__all__ = ["ByteTransport", "TransportClosed"]
