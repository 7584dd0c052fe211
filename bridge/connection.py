"""One WebSocket connection: the Noise handshake, then the RPC session of a paired device.

The connection owns ordering (one send lock: Noise nonces must leave in the order they were
taken), request tasks, cancellation, chunk routing, limits and the audit entry of every op.
Any integrity failure (tampered, replayed or reordered frame) closes the connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from agent_core import __version__
from agent_core.channel.crypto import CryptoError
from agent_core.channel.handshake import SUBPROTOCOL_PAIR, ServerHandshake
from agent_core.channel.noise import NoiseError, Transport
from agent_core.rpc.errors import (
    EACCES,
    EBUSY,
    ECANCELED,
    EINVAL,
    EIO,
    ENOENT,
    ENOSPC,
    EUNSUPPORTED,
    RpcError,
)
from agent_core.rpc.frames import (
    MAX_CHUNK_PAYLOAD,
    MAX_ID,
    Chunk,
    FrameDecoder,
    FrameError,
    encode_chunk,
    encode_envelope,
)
from agent_core.transport.ws_cpython import PushFrames
from bridge.devices import Device
from bridge.ops.base import REGISTRY, OpContext, OpSpec

if TYPE_CHECKING:
    from bridge.server import Bridge

log = logging.getLogger("kite.bridge")

CLOSE_POLICY = 1008  # RFC 6455 policy violation: refused peer, failed integrity check
SERVER_INFO = {"name": "kite-bridge", "version": __version__, "protocol": "kite.v1"}
_ERRNO_CODES = {
    errno.ENOENT: ENOENT,
    errno.EACCES: EACCES,
    errno.EPERM: EACCES,
    errno.ENOSPC: ENOSPC,
    errno.EDQUOT: ENOSPC,
}
_END = object()
WRITE_BUFFER_HIGH = 1 << 20
INBOX_HIGH = 32  # push mode: pause reading when this many messages wait (websockets' max_queue)
INBOX_LOW = 8


class PushServerConnection(PushFrames, ServerConnection):
    """A websockets ServerConnection that can hand each binary message to a callback as it is
    parsed (see `Connection._on_frame`); pass it to `serve(create_connection=...)`.

    Until `start_push`, and for control frames always, it behaves exactly like its base class.
    A text message is handed over as None (the session refuses it)."""

    def start_push(self, on_message: Callable[[bytes | bytearray | None], None]) -> bool:
        """Switch to push delivery; messages websockets already queued are delivered first, in
        order. False (nothing changed) if its queue is in a state this cannot take over."""
        assembler = getattr(self, "recv_messages", None)
        frames = getattr(getattr(assembler, "frames", None), "queue", None)
        if frames is None or assembler.get_in_progress or assembler.paused:
            return False
        queued = list(frames)
        frames.clear()
        self._push = on_message
        for frame in queued:
            self.process_event(frame)
        return True

    def _text_frame(self, push: Callable[[bytes | bytearray | None], None]) -> None:
        self._push = None  # nothing more is handled: the session closes
        push(None)


class _Request:
    __slots__ = ("_chunks", "op", "started", "task")

    def __init__(self, op: str) -> None:
        self.op = op
        self.task: asyncio.Task[None] | None = None
        self._chunks: asyncio.Queue[Any] | None = None
        self.started = time.monotonic()

    @property
    def chunks(self) -> asyncio.Queue[Any]:
        """The upload queue, made on first use: most requests never receive a chunk."""
        if self._chunks is None:
            self._chunks = asyncio.Queue(maxsize=64)
        return self._chunks


class Connection:
    def __init__(self, bridge: Bridge, ws: ServerConnection) -> None:
        self.bridge = bridge
        self.ws = ws
        self.peer = ws.remote_address[0] if ws.remote_address else "?"
        self.device: Device | None = None
        self._transport: Transport | None = None
        self._send_lock = asyncio.Lock()
        self._requests: dict[int, _Request] = {}
        self._decoder = FrameDecoder()
        self._closing = False
        self._last_rx = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_close: asyncio.Task[None] | None = None
        self._inbox: deque[bytes | bytearray | None] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._paused = False

    # -- handshake -------------------------------------------------------------------------

    async def _recv_binary(self, timeout: float) -> bytes:
        msg = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(msg, str):
            raise NoiseError("text frame during handshake")
        return msg

    async def handshake(self) -> Device | None:
        mode = self.ws.subprotocol or ""
        bridge = self.bridge
        hs = ServerHandshake(
            bridge.backend, mode=mode, static=bridge.host_keypair, info=SERVER_INFO
        )
        t0 = time.monotonic()
        outcome = "ok"
        device: Device | None = None
        try:
            timeout = bridge.config.handshake_timeout_s
            await self.ws.send(await hs.respond(await self._recv_binary(timeout)))
            message3 = await self._recv_binary(timeout)
            if mode == SUBPROTOCOL_PAIR:
                result = await hs.finish(message3, bridge.registry.active_secrets())
                if result.psk is None or not bridge.registry.consume_secret(result.psk):
                    raise NoiseError("pairing secret already used")
                device = bridge.registry.register(
                    result.remote_static, result.remote_info.get("name")
                )
            else:
                result = await hs.finish(message3)
                device = bridge.registry.by_key(result.remote_static)
                if device is None or device.revoked:
                    outcome = "EACCES: device revoked" if device else "EACCES: unknown device"
                    device = None
            if device is not None:
                self._transport = result.transport
        except (NoiseError, CryptoError, TimeoutError) as exc:
            outcome = f"refused: {exc.__class__.__name__}: {exc}"
        except ConnectionClosed:
            outcome = "refused: peer closed during handshake"
        bridge.audit_event(
            op="pair" if mode == SUBPROTOCOL_PAIR else "connect",
            device=device.id if device else None,
            peer=self.peer,
            outcome=outcome,
            t0=t0,
        )
        if device is None:
            bridge.note_handshake_failure(self.peer, mode)
            return None
        bridge.registry.touch(device.id)
        return device

    # -- session ---------------------------------------------------------------------------

    async def run(self) -> None:
        device = await self.handshake()
        if device is None:
            # No application message: the peer learns nothing but that it was refused.
            await self.ws.close(CLOSE_POLICY, "")
            return
        self.device = device
        # A deeper write buffer than websockets' 32 KiB: a bulk read then waits for the socket
        # (one wake-up) per MiB rather than per 64 KiB message.
        with contextlib.suppress(AttributeError, NotImplementedError):
            self.ws.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.bridge.live_connections.add(self)
        try:
            await self._serve()
        finally:
            self.bridge.live_connections.discard(self)
            await self._abort_requests()

    async def _serve(self) -> None:
        transport = self._transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        # One timer for the idle limit, re-armed lazily, instead of a timeout context per frame.
        self._last_rx = loop.time()
        self._idle_handle = loop.call_later(self.bridge.config.idle_timeout_s, self._idle_check)
        try:
            pushable = transport.sync and isinstance(self.ws, PushServerConnection)
            if pushable and self.ws.start_push(self._on_frame):  # type: ignore[attr-defined]
                await self._serve_pushed()
                return
            recv = self.ws.recv
            while True:
                try:
                    frame = await recv()
                except ConnectionClosed:
                    return
                self._last_rx = loop.time()
                if not await self._handle_frame(frame):
                    return
        finally:
            if self._idle_handle is not None:
                self._idle_handle.cancel()

    async def _handle_frame(self, frame: bytes | bytearray | str | None) -> bool:
        """Decrypt, decode and route one message; False once the connection is being closed."""
        transport = self._transport
        assert transport is not None
        if frame is None or isinstance(frame, str):
            await self.close(CLOSE_POLICY, "binary frames only")
            return False
        try:
            if transport.sync:
                plain = transport.decrypt_sync(frame)
            else:
                plain = await transport.decrypt(bytes(frame))
        except (NoiseError, CryptoError):
            log.warning("closing %s: frame failed authentication", self._who())
            await self.close(CLOSE_POLICY, "integrity check failed")
            return False
        try:
            item = self._decoder.feed(plain)
        except FrameError as exc:
            await self.close(CLOSE_POLICY, f"framing error: {exc}"[:120])
            return False
        except ValueError as exc:  # malformed JSON: answer, keep the session
            await self.send_envelope(_error(None, RpcError(EINVAL, f"malformed JSON: {exc}")))
            return True
        if item is None:
            return True
        if isinstance(item, Chunk):
            await self._route_chunk(item)
        else:
            await self._on_envelope(item)
        return True

    # Push mode: websockets hands each message to `_on_frame` from its `data_received`, and the
    # message is handled right there when that completes without waiting (an inline op: the
    # reply is written before the callback returns), which saves the wake-up of a reader task
    # per request. When handling does wait (flow control, a slow write, a close), it continues
    # in a task, and later messages queue behind it, in order, with reading paused while the
    # queue is long: the same ordering and back-pressure as the pull loop.

    async def _serve_pushed(self) -> None:
        try:
            await self.ws.wait_closed()
        except asyncio.CancelledError:
            if self._worker is not None:
                self._worker.cancel()
            raise
        finally:
            self.ws._push = None  # type: ignore[attr-defined]
        worker = self._worker
        if worker is not None and not worker.done():
            # As in the pull loop, a handler still running ends before the session does; one
            # waiting to queue an upload chunk is released by ending the requests first.
            await self._abort_requests()
            with contextlib.suppress(BaseException):
                await worker

    def _on_frame(self, frame: bytes | bytearray | None) -> None:
        if self._closing:
            return
        self._last_rx = asyncio.get_running_loop().time()
        if self._worker is not None:  # a message before this one is still being handled
            self._inbox.append(frame)
            if len(self._inbox) >= INBOX_HIGH and not self._paused:
                self._paused = True
                self.ws.transport.pause_reading()
            return
        coro = self._handle_frame(frame)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except ConnectionClosed:
            return  # the peer is gone; `_serve_pushed` ends the session
        except BaseException:
            log.exception("closing %s: error while handling a message", self._who())
            self._closing = True
            self._worker = asyncio.get_running_loop().create_task(
                self.ws.close(1011, "internal error")
            )
            return
        self._worker = asyncio.get_running_loop().create_task(self._finish(coro, waiting))

    async def _finish(self, coro: Any, waiting: Any) -> None:
        """Carry on a message handler that waited, then the messages queued meanwhile."""
        try:
            while True:
                # Wait for what the handler waits for; resuming it makes it read the outcome.
                try:
                    if waiting is None:
                        await asyncio.sleep(0)
                    else:
                        await asyncio.wait([waiting])
                    resume = coro.send
                    arg: Any = None
                except asyncio.CancelledError as exc:
                    resume, arg = coro.throw, exc  # the handler sees the cancellation
                try:
                    waiting = resume(arg)
                except StopIteration as stop:
                    more = stop.value
                    break
            while more and self._inbox and not self._closing:
                frame = self._inbox.popleft()
                if self._paused and len(self._inbox) <= INBOX_LOW:
                    self._paused = False
                    self.ws.transport.resume_reading()
                more = await self._handle_frame(frame)
        except asyncio.CancelledError:
            raise
        except ConnectionClosed:
            pass  # the peer is gone; `_serve_pushed` ends the session
        except Exception:
            log.exception("closing %s: error while handling a message", self._who())
            self._closing = True
            await self.ws.close(1011, "internal error")
        finally:
            if self._closing:
                self._inbox.clear()
            if self._paused:
                self._paused = False
                with contextlib.suppress(Exception):
                    self.ws.transport.resume_reading()
            self._worker = None

    def _idle_check(self) -> None:
        """Close the connection once no frame has arrived for the idle limit."""
        loop = asyncio.get_running_loop()
        left = self._last_rx + self.bridge.config.idle_timeout_s - loop.time()
        if left > 0:
            self._idle_handle = loop.call_later(left, self._idle_check)
            return
        self._idle_handle = None
        self._idle_close = loop.create_task(self.ws.close(1000, "idle timeout"))

    async def _route_chunk(self, chunk: Chunk) -> None:
        req = self._requests.get(chunk.id)
        if req is None:
            return  # the request finished or was cancelled; late chunks are dropped
        for item in (chunk.payload, _END) if chunk.final else (chunk.payload,):
            if not await self._offer(req, item):
                return

    @staticmethod
    async def _offer(req: _Request, item: Any) -> bool:
        """Queue a chunk for its handler; wait while the queue is full (flow control), but stop
        waiting if the handler finishes without reading (else the connection would stall)."""
        if not req.chunks.full():
            req.chunks.put_nowait(item)
            return True
        assert req.task is not None
        put = asyncio.ensure_future(req.chunks.put(item))
        await asyncio.wait({put, req.task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            return False
        return True

    async def _on_envelope(self, env: dict[str, Any]) -> None:
        req_id = env.get("id")
        if not isinstance(req_id, int) or isinstance(req_id, bool) or not 0 <= req_id <= MAX_ID:
            await self.send_envelope(
                _error(None, RpcError(EINVAL, "request id must be an integer in [0, 2^32)"))
            )
            return
        op = env.get("op")
        args = env.get("args", {})
        if not isinstance(op, str) or not isinstance(args, dict):
            await self.send_envelope(
                _error(req_id, RpcError(EINVAL, "a request is {id, op: string, args: object}"))
            )
            return
        if op == "cancel":
            await self._cancel(req_id, args)
            return
        spec = REGISTRY.get(op)
        problem: RpcError | None = None
        if spec is None:
            problem = RpcError(EUNSUPPORTED, f"unknown op '{op}'")
        elif req_id in self._requests:
            problem = RpcError(EINVAL, f"request id {req_id} is already in flight")
        elif len(self._requests) >= self.bridge.config.max_inflight:
            problem = RpcError(EBUSY, "too many requests in flight on this connection")
        elif spec.mutates and self.bridge.policy.read_only:
            problem = RpcError(EACCES, "the host is in read-only mode")
        if problem is not None:
            self.bridge.audit_op(self, op, req_id, {}, problem.code, time.monotonic())
            await self.send_envelope(_error(req_id, problem))
            return
        assert spec is not None
        req = _Request(op)
        self._requests[req_id] = req
        self._decoder.activate(req_id)
        if spec.inline and not args.get("binary"):
            await self._run(req_id, req, spec, args)
        else:
            req.task = asyncio.get_running_loop().create_task(self._run(req_id, req, spec, args))

    async def _cancel(self, req_id: int, args: dict[str, Any]) -> None:
        target = args.get("target")
        req = self._requests.get(target) if isinstance(target, int) else None
        if req is not None and req.task is not None:
            req.task.cancel()
        await self.send_envelope(
            {"id": req_id, "ok": True, "result": {"cancelled": req is not None}}
        )

    async def _run(self, req_id: int, req: _Request, spec: OpSpec, args: dict[str, Any]) -> None:
        seq = 0

        async def emit(event: str, data: Any) -> None:
            await self.send_envelope({"id": req_id, "event": event, "data": data})

        async def send_chunk(payload: bytes, final: bool) -> None:
            nonlocal seq
            view = memoryview(payload)
            n = len(view)
            if n <= MAX_CHUNK_PAYLOAD:  # the usual case: one frame, one copy
                frame = encode_chunk(req_id, seq, view, final=final)
                seq += 1
                await self._send_frames([frame])
                return
            frames = []
            for i in range(0, n, MAX_CHUNK_PAYLOAD):
                last = final and i + MAX_CHUNK_PAYLOAD >= n
                frames.append(
                    encode_chunk(req_id, seq, view[i : i + MAX_CHUNK_PAYLOAD], final=last)
                )
                seq += 1
            await self._send_frames(frames)

        async def recv_chunks() -> AsyncIterator[bytes]:
            while True:
                item = await req.chunks.get()
                if item is _END:
                    return
                yield item

        bridge = self.bridge
        assert self.device is not None
        ctx = OpContext(
            request_id=req_id,
            device_id=self.device.id,
            workspace=bridge.workspace,
            policy=bridge.policy,
            snapshots=bridge.snapshots,
            emit=emit,
            send_chunk=send_chunk,
            recv_chunks=recv_chunks,
            host_plugins=bridge.host_plugins,
            sessions=bridge.sessions,
        )
        outcome = "ok"
        try:
            result = await spec.handler(ctx, args)
            reply: dict[str, Any] = {"id": req_id, "ok": True, "result": result}
        except RpcError as exc:
            outcome, reply = exc.code, _error(req_id, exc)
        except asyncio.CancelledError:
            outcome = ECANCELED
            reply = _error(req_id, RpcError(ECANCELED, "cancelled"))
        except OSError as exc:
            code = _ERRNO_CODES.get(exc.errno or 0, EIO)
            outcome = code
            reply = _error(req_id, RpcError(code, exc.strerror or "host I/O error"))
        except Exception:
            log.exception("op %s failed", spec.name)
            outcome = EIO
            reply = _error(req_id, RpcError(EIO, "internal error in the bridge (see its log)"))
        finally:
            self._requests.pop(req_id, None)
            self._decoder.retire(req_id)
        try:
            if not self._closing:
                with contextlib.suppress(ConnectionClosed):
                    await self.send_envelope(reply)
        finally:
            # After the reply: the log write is off the round trip, and still never skipped.
            bridge.audit_op(self, spec.name, req_id, ctx.audit, outcome, req.started)

    # -- output ----------------------------------------------------------------------------

    async def send_envelope(self, obj: dict[str, Any]) -> None:
        await self._send_frames(encode_envelope(obj))

    async def _send_frames(self, frames: list[bytes]) -> None:
        transport = self._transport
        assert transport is not None
        if transport.sync:
            # Encrypting and handing the message to websockets happen in one synchronous step
            # (`ws.send` queues the frame before its first await), so nonce order is wire
            # order without the lock.
            encrypt = transport.encrypt_sync
            ws = self.ws
            send_now = ws.send_now if isinstance(ws, PushFrames) else None
            for frame in frames:
                data = encrypt(frame)
                if send_now is None or not send_now(data):
                    await ws.send(data)
            return
        async with self._send_lock:
            for frame in frames:
                await self.ws.send(await transport.encrypt(frame))

    # -- teardown --------------------------------------------------------------------------

    def _who(self) -> str:
        return f"device {self.device.id} ({self.peer})" if self.device else self.peer

    async def close(self, code: int, reason: str) -> None:
        self._closing = True
        await self._abort_requests()
        await self.ws.close(code, reason)

    async def _abort_requests(self) -> None:
        """Cancel every running request (commands get their process trees killed) and wait."""
        self._closing = True
        tasks = [r.task for r in self._requests.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _error(req_id: int | None, exc: RpcError) -> dict[str, Any]:
    return {"id": req_id, "ok": False, "error": exc.to_wire()}
