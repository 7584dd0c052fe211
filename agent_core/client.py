"""The RPC client over the secure channel, for any runtime.

It takes a ByteTransport (websockets on CPython, the browser WebSocket under Pyodide) and a crypto
backend, runs the Kite handshake, then multiplexes requests: each `call` gets an id, stream events
go to the caller's callback, binary chunks to its chunk callback, and the response ends it.

Receiving has two modes. The general one is a reader task that awaits `transport.recv()`,
decrypts and dispatches. When the transport can push messages (`start_push`, CPython's
websockets) and the crypto backend is synchronous, messages are instead decrypted and dispatched
in the transport's own callback: a reply resolves its caller's future in the step it arrived in,
with no reader task in between. A stream callback that returns an awaitable switches push mode to
a backlog (drained in order by a task, reading paused while it is long), so ordering and flow
control are the same in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from agent_core.channel.crypto import CryptoBackend, CryptoError, KeyPair
from agent_core.channel.handshake import ClientHandshake, HandshakeResult
from agent_core.channel.noise import NoiseError
from agent_core.rpc.errors import RpcError
from agent_core.rpc.frames import (
    MAX_CHUNK_PAYLOAD,
    Chunk,
    FrameDecoder,
    FrameError,
    encode_chunk,
    encode_envelope,
)
from agent_core.transport.base import ByteTransport, TransportClosed

OnEvent = Callable[[str, Any], Any]
OnChunk = Callable[[bytes, bool], Any]

BACKLOG_HIGH = 64
"""Push mode: pause reading from the network when this many messages wait for a slow callback."""
BACKLOG_LOW = 16


class ChannelClosed(ConnectionError):
    """The channel is gone: closed by the bridge, the network, or a failed integrity check."""


class _Pending:
    __slots__ = ("future", "on_chunk", "on_event")

    def __init__(
        self, future: asyncio.Future[Any], on_event: OnEvent | None, on_chunk: OnChunk | None
    ):
        self.future = future
        self.on_event = on_event
        self.on_chunk = on_chunk


class KiteClient:
    """One authenticated connection to a bridge."""

    def __init__(self, transport: ByteTransport, handshake: HandshakeResult) -> None:
        self.transport = transport
        self.server_info = handshake.remote_info
        self._channel = handshake.transport
        self._decoder = FrameDecoder()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._send_lock = asyncio.Lock()
        self._closed: BaseException | None = None
        self._backlog: deque[Any] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._paused = False
        loop = asyncio.get_running_loop()
        start_push = getattr(transport, "start_push", None)
        self.push_mode = bool(
            getattr(self._channel, "sync", False)
            and start_push is not None
            and start_push(self._on_message)
        )
        """True when replies are handled in the transport's callback (see the module doc)."""
        if self.push_mode:
            self._reader = loop.create_task(self._watch_closed())
        else:
            self._reader = loop.create_task(self._read_loop())

    @classmethod
    async def handshake(
        cls,
        transport: ByteTransport,
        backend: CryptoBackend,
        *,
        mode: str,
        static: KeyPair,
        host_key: bytes,
        psk: bytes | None = None,
        info: dict[str, Any] | None = None,
    ) -> KiteClient:
        hs = ClientHandshake(
            backend, mode=mode, static=static, host_key=host_key, psk=psk, info=info
        )
        try:
            await transport.send(await hs.start())
            await transport.send(await hs.finish(await transport.recv()))
        except BaseException:
            await transport.close()
            raise
        assert hs.result is not None
        return cls(transport, hs.result)

    # -- sending ---------------------------------------------------------------------------

    async def _send_plain(self, frames: list[bytes]) -> None:
        if self._closed is not None:
            raise ChannelClosed(str(self._closed))
        channel = self._channel
        transport = self.transport
        send_now = getattr(transport, "send_now", None)
        async with self._send_lock:  # nonce order must equal wire order
            for frame in frames:
                try:
                    if channel.sync:
                        data = channel.encrypt_sync(frame)
                        if send_now is None or not send_now(data):
                            await transport.send(data)
                    else:
                        await transport.send(await channel.encrypt(frame))
                except TransportClosed as exc:
                    raise ChannelClosed(str(exc)) from exc

    async def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        on_event: OnEvent | None = None,
        on_chunk: OnChunk | None = None,
        upload: bytes | AsyncIterable[bytes] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run one op; return its result or raise RpcError / ChannelClosed.

        `upload` streams bytes to the bridge as binary chunks after the request (for ops that take
        `"binary": true`). Cancelling the awaiting task sends `cancel` for the request.
        """
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = _Pending(fut, on_event, on_chunk)
        try:
            await self._send_plain(encode_envelope({"id": req_id, "op": op, "args": args or {}}))
            if upload is not None:
                await self._upload(req_id, upload)
            if timeout is None:
                return await fut
            async with asyncio.timeout(timeout):
                return await fut
        except (asyncio.CancelledError, TimeoutError):
            answered = fut.done() and not fut.cancelled()
            if not answered and self._closed is None:
                with contextlib.suppress(ChannelClosed):
                    await self._send_plain(
                        encode_envelope(
                            {"id": next(self._ids), "op": "cancel", "args": {"target": req_id}}
                        )
                    )
            raise
        finally:
            self._pending.pop(req_id, None)

    async def _upload(self, req_id: int, data: bytes | AsyncIterable[bytes]) -> None:
        seq = 0
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data)
            offsets = range(0, max(len(view), 1), MAX_CHUNK_PAYLOAD)
            for off in offsets:
                piece = bytes(view[off : off + MAX_CHUNK_PAYLOAD])
                final = off + MAX_CHUNK_PAYLOAD >= len(view)
                await self._send_plain([encode_chunk(req_id, seq, piece, final=final)])
                seq += 1
            return
        pending = b""
        async for block in data:
            pending += block
            while len(pending) > MAX_CHUNK_PAYLOAD:
                await self._send_plain(
                    [encode_chunk(req_id, seq, pending[:MAX_CHUNK_PAYLOAD], final=False)]
                )
                pending = pending[MAX_CHUNK_PAYLOAD:]
                seq += 1
        await self._send_plain([encode_chunk(req_id, seq, pending, final=True)])

    async def cancel(self, target: int) -> None:
        await self.call("cancel", {"target": target})

    # -- receiving -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self.transport.recv()
                plain = await self._channel.decrypt(frame)
                item = self._decoder.feed(plain)
                if item is None:
                    continue
                waiting = self._deliver(item)
                if waiting is not None:
                    await waiting
        except (TransportClosed, NoiseError, CryptoError, FrameError, ValueError) as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(ChannelClosed("client closed"))
            raise
        except BaseException as exc:  # a callback raised: the channel state is unknown
            self._fail(exc)
            raise

    def _on_message(self, frame: bytes | bytearray) -> None:
        """Push mode: one message, straight from the transport's receive callback."""
        if self._closed is not None:
            return
        try:
            item = self._decoder.feed(self._channel.decrypt_sync(frame))
        except (NoiseError, CryptoError, FrameError, ValueError) as exc:
            self._fail(exc)
            return
        if item is None:
            return
        backlog = self._backlog
        if backlog is not None:  # a callback is still being awaited: keep the order
            backlog.append(item)
            if len(backlog) >= BACKLOG_HIGH and not self._paused:
                self._paused = True
                self.transport.pause_reading()  # type: ignore[attr-defined]
            return
        try:
            waiting = self._deliver(item)
        except BaseException as exc:  # a callback raised: the channel state is unknown
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if waiting is not None:
            self._backlog = deque()
            self._drainer = asyncio.get_running_loop().create_task(self._drain(waiting))

    async def _drain(self, waiting: Awaitable[Any]) -> None:
        """Push mode: await a stream callback, then deliver what arrived meanwhile, in order."""
        backlog = self._backlog
        assert backlog is not None
        try:
            await waiting
            while backlog and self._closed is None:
                item = backlog.popleft()
                if self._paused and len(backlog) <= BACKLOG_LOW:
                    self._paused = False
                    self.transport.resume_reading()  # type: ignore[attr-defined]
                waiting = self._deliver(item)
                if waiting is not None:
                    await waiting
        except asyncio.CancelledError:
            self._fail(ChannelClosed("client closed"))
            raise
        except BaseException as exc:  # a callback raised: the channel state is unknown
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._backlog = None
            if self._paused:
                self._paused = False
                with contextlib.suppress(Exception):
                    self.transport.resume_reading()  # type: ignore[attr-defined]

    async def _watch_closed(self) -> None:
        """Push mode: fail the channel when the transport closes (after the backlog is out)."""
        try:
            reason = await self.transport.wait_closed()  # type: ignore[attr-defined]
            if self._drainer is not None:
                with contextlib.suppress(BaseException):
                    await self._drainer
            self._fail(TransportClosed(reason))
        except asyncio.CancelledError:
            self._fail(ChannelClosed("client closed"))
            raise

    def _deliver(self, item: dict[str, Any] | Chunk) -> Awaitable[Any] | None:
        """Hand one envelope or chunk to its request; return what a callback left to await."""
        if isinstance(item, Chunk):
            p = self._pending.get(item.id)
            if p is not None and p.on_chunk is not None:
                out = p.on_chunk(item.payload, item.final)
                if out is not None and inspect.isawaitable(out):
                    return out
            return None
        return self._dispatch(item)

    def _dispatch(self, env: dict[str, Any]) -> Awaitable[Any] | None:
        req_id = env.get("id")
        p = self._pending.get(req_id) if isinstance(req_id, int) else None
        if "event" in env:
            if p is not None and p.on_event is not None:
                out = p.on_event(str(env["event"]), env.get("data"))
                if out is not None and inspect.isawaitable(out):
                    return out
            return None
        if p is None:
            if req_id is None and env.get("ok") is False:
                # A protocol-level error the bridge could not tie to a request.
                self._fail(RpcError.from_wire(env.get("error")))
            return None
        if p.future.done():
            return None
        if env.get("ok") is True:
            p.future.set_result(env.get("result") or {})
        else:
            p.future.set_exception(RpcError.from_wire(env.get("error")))
        return None

    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for p in self._pending.values():
            if not p.future.done():
                if isinstance(exc, RpcError):
                    p.future.set_exception(exc)
                else:
                    p.future.set_exception(ChannelClosed(f"channel closed: {exc}"))

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def wait_closed(self) -> None:
        """Until the connection ends. Cancelling the caller cancels only the wait (awaiting the
        reader itself would swallow the caller's own cancellation along with the reader's end)."""
        await asyncio.wait({self._reader})

    async def close(self) -> None:
        self._reader.cancel()
        if self._drainer is not None:
            self._drainer.cancel()
        await asyncio.wait({self._reader})
        if self._drainer is not None:
            await asyncio.wait({self._drainer})
        await self.transport.close()
