"""ByteTransport over the JavaScript ``WebSocket`` (Pyodide in a browser, or in Node >= 20 with
``--experimental-websocket``). Imported only under Pyodide: it needs the ``js`` module.

The JS socket is event-driven; its callbacks (``create_proxy``) put messages on an
`asyncio.Queue`, so `recv` is an ordinary await on Pyodide's event loop. The browser's
``send`` never blocks, so `send` waits while more than `HIGH_WATER` bytes are still buffered:
a large upload then advances at the network's pace instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from js import Uint8Array, WebSocket
from pyodide.ffi import JsProxy, create_proxy, to_js

from agent_core.transport.base import TransportClosed

HIGH_WATER = 1 << 20
"""`send` waits while the socket has more than this many bytes queued (``bufferedAmount``)."""

_POLL_S = 0.005
"""How often a waiting `send` looks at ``bufferedAmount`` (the browser has no drain event)."""

_OPEN = 1
_CLOSE_UNSUPPORTED_DATA = 1003


class _Closed:
    """Queue sentinel: the socket closed, with the reason the peer or the browser gave."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class BrowserWebSocketTransport:
    """`ByteTransport` over one open JS ``WebSocket``; build it with `open_browser_websocket`."""

    def __init__(self, ws: JsProxy, queue: asyncio.Queue[bytes | _Closed], proxies: list) -> None:
        self.ws = ws
        self._queue = queue
        self._proxies = proxies
        self._closed: str | None = None

    @property
    def subprotocol(self) -> str:
        return str(self.ws.protocol)

    async def send(self, data: bytes) -> None:
        if self._closed is not None or self.ws.readyState != _OPEN:
            raise TransportClosed(self._closed or "WebSocket is not open")
        while self.ws.bufferedAmount > HIGH_WATER:
            await asyncio.sleep(_POLL_S)
            if self.ws.readyState != _OPEN:
                raise TransportClosed(self._closed or "WebSocket closed while sending")
        array = Uint8Array.new(len(data))
        array.assign(data)
        self.ws.send(array)

    async def recv(self) -> bytes:
        if self._closed is not None and self._queue.empty():
            raise TransportClosed(self._closed)
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._closed = item.reason
            self._queue.put_nowait(item)  # later recv calls fail the same way
            raise TransportClosed(item.reason)
        return item

    async def close(self) -> None:
        if self._closed is None:
            self._closed = "closed by this side"
        if self.ws.readyState <= _OPEN:  # CONNECTING or OPEN
            self.ws.close(1000)
        self._queue.put_nowait(_Closed(self._closed))
        _release(self.ws, self._proxies)


def _release(ws: JsProxy, proxies: list) -> None:
    """Detach the JS callbacks and free their proxies (they would otherwise leak)."""
    for name in ("onopen", "onmessage", "onerror", "onclose"):
        setattr(ws, name, None)
    for proxy in proxies:
        proxy.destroy()
    proxies.clear()


async def open_browser_websocket(
    url: str, subprotocol: str, *, timeout: float = 30.0
) -> BrowserWebSocketTransport:
    """Open ``url`` (ws:// or wss://) offering exactly ``subprotocol``.

    A browser does not expose why an upgrade failed (HTTP 403/400 look like a network error), so
    every failure to open raises `TransportClosed` with what the browser did report.
    """
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()
    queue: asyncio.Queue[bytes | _Closed] = asyncio.Queue()
    ws = WebSocket.new(url, to_js([subprotocol]))
    ws.binaryType = "arraybuffer"

    def on_open(_event: Any) -> None:
        if not opened.done():
            opened.set_result(None)

    def on_message(event: Any) -> None:
        data = event.data
        if isinstance(data, str):
            ws.close(_CLOSE_UNSUPPORTED_DATA, "binary frames only")
            queue.put_nowait(_Closed("peer sent a text frame"))
            return
        queue.put_nowait(data.to_bytes())

    def on_error(_event: Any) -> None:
        if not opened.done():
            opened.set_exception(TransportClosed(f"WebSocket to {url} failed to open"))

    def on_close(event: Any) -> None:
        why = f": {event.reason}" if event.reason else ""
        reason = f"WebSocket closed (code {event.code}{why})"
        if not opened.done():
            opened.set_exception(TransportClosed(reason))
        queue.put_nowait(_Closed(reason))
        loop.call_soon(_release, ws, proxies)  # not from inside the proxy's own call

    proxies = [create_proxy(f) for f in (on_open, on_message, on_error, on_close)]
    ws.onopen, ws.onmessage, ws.onerror, ws.onclose = proxies
    try:
        await asyncio.wait_for(asyncio.shield(opened), timeout)
    except BaseException as exc:
        opened.cancel()  # a late open/error/close event must not set it (nobody would read it)
        ws.close()
        _release(ws, proxies)
        if isinstance(exc, TimeoutError):
            raise TransportClosed(f"WebSocket to {url} did not open in {timeout} s") from None
        raise
    if ws.protocol != subprotocol:
        ws.close(1002, "subprotocol not agreed")
        _release(ws, proxies)
        raise TransportClosed(f"the server did not agree to subprotocol {subprotocol!r}")
    return BrowserWebSocketTransport(ws, queue, proxies)
