"""ByteTransport over the `websockets` library (CPython). Imported only on CPython.

Besides the pull API (`recv`), the transport can push: after `start_push(callback)` each binary
message is handed to the callback synchronously as websockets parses it, from the protocol's
`data_received`. A client that can decrypt synchronously then resolves a waiting call in the
same event-loop step the bytes arrived in, instead of waking a reader task that wakes the
caller (one task switch less per round trip). Control frames stay with websockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from agent_core.runtime import use_native_json
from agent_core.transport.base import TransportClosed

OnMessage = Callable[[bytes | bytearray], None]


class PushFrames:
    """Mixin for a websockets asyncio connection (client or server): once `_push` is set, data
    messages go to it as websockets parses them, fragmented ones reassembled; control frames
    stay with websockets. What a text frame means is the subclass's (`_text_frame`)."""

    _push: Callable[[Any], None] | None = None
    _fragments: list[bytes] | None = None

    def _text_frame(self, push: Callable[[Any], None]) -> None:
        raise NotImplementedError

    def send_now(self, data: bytes) -> bool:
        """Write one binary message synchronously, when `send` would not wait: the connection
        open, no fragmented send under way, the transport not asking to slow down. False (and
        nothing written) otherwise: then `await send(data)`, which waits or raises as usual.

        `send` runs an async context manager and a drain per message; on a small round trip
        that is a measurable share of the time (docs/architecture.md, "The request hot path")."""
        ws: Any = self
        if ws.protocol.state is not State.OPEN or ws.send_in_progress is not None or ws.paused:
            return False
        ws.protocol.send_binary(data)
        ws.send_data()
        return True

    def process_event(self, event: Any) -> None:
        push = self._push
        if push is None or not isinstance(event, Frame):
            super().process_event(event)  # type: ignore[misc]
            return
        opcode = event.opcode
        if opcode is Opcode.BINARY and self._fragments is None:
            if event.fin:
                push(event.data)  # often a bytearray: consumers take any bytes-like object
            else:
                self._fragments = [bytes(event.data)]
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(event.data))
            if event.fin:
                data = b"".join(self._fragments)
                self._fragments = None
                push(data)
        elif opcode in (Opcode.TEXT, Opcode.CONT):
            self._text_frame(push)  # a text message, or a stray continuation
        else:
            super().process_event(event)  # type: ignore[misc]  # ping, pong, close


class _PushConnection(PushFrames, ClientConnection):
    """A ClientConnection that can deliver data messages to a callback instead of its queue."""

    _refused: str | None = None

    def _text_frame(self, push: Callable[[Any], None]) -> None:
        # Refused as `recv` refuses it.
        if self._refused is None:
            self._refused = "peer sent a text frame"
            self._push = None
            self.loop.create_task(self.close(1003, "binary frames only"))


class WebSocketTransport:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise TransportClosed(str(exc)) from exc

    def send_now(self, data: bytes) -> bool:
        """Send without awaiting when that cannot wait (see `PushFrames.send_now`); False means
        nothing was sent: `await send(data)` instead."""
        ws = self.ws
        return isinstance(ws, PushFrames) and ws.send_now(data)

    async def recv(self) -> bytes:
        try:
            msg = await self.ws.recv()
        except ConnectionClosed as exc:
            raise TransportClosed(str(exc)) from exc
        if isinstance(msg, str):
            await self.ws.close(1003, "binary frames only")
            raise TransportClosed("peer sent a text frame")
        return msg

    def start_push(self, on_message: OnMessage) -> bool:
        """Deliver every later binary message to `on_message` (synchronously, in arrival order)
        instead of `recv`. False (nothing changed) when this connection cannot push: then use
        `recv`. After True, `recv` must not be called; `wait_closed` reports the end."""
        ws = self.ws
        queued = getattr(getattr(ws, "recv_messages", None), "frames", None)
        if not isinstance(ws, _PushConnection) or queued is None or len(queued) != 0:
            return False  # messages already queued would be overtaken by pushed ones
        ws._push = on_message
        return True

    def pause_reading(self) -> None:
        """Push mode: stop reading from the socket (the consumer is behind); TCP pushes back."""
        self.ws.transport.pause_reading()

    def resume_reading(self) -> None:
        self.ws.transport.resume_reading()

    async def wait_closed(self) -> str:
        """Wait until the connection is closed; return why, as `TransportClosed` would say."""
        await self.ws.wait_closed()
        refused = getattr(self.ws, "_refused", None)
        return refused or str(self.ws.protocol.close_exc)

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
    use_native_json()  # this runtime's fast envelope codec, for every client on CPython
    kwargs.setdefault("create_connection", _PushConnection)
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
