"""ByteTransport over the `websockets` library (CPython). Imported only on CPython."""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent_core.transport.base import TransportClosed


class WebSocketTransport:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise TransportClosed(str(exc)) from exc

    async def recv(self) -> bytes:
        try:
            msg = await self.ws.recv()
        except ConnectionClosed as exc:
            raise TransportClosed(str(exc)) from exc
        if isinstance(msg, str):
            await self.ws.close(1003, "binary frames only")
            raise TransportClosed("peer sent a text frame")
        return msg

    async def close(self) -> None:
        await self.ws.close()


class HandshakeRejected(ConnectionError):
    """The HTTP upgrade was refused (status carried for callers and tests)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()}")
        self.status = status


async def open_websocket(
    url: str, subprotocol: str, *, origin: str | None = None, **kwargs: Any
) -> WebSocketTransport:
    """Open `url` (ws:// or wss://) offering exactly `subprotocol`."""
    try:
        ws = await connect(
            url,
            subprotocols=[subprotocol],  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            max_size=65535,
            compression=None,
            **kwargs,
        )
    except InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
        raise HandshakeRejected(exc.response.status_code, body) from exc
    return WebSocketTransport(ws)
