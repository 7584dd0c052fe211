"""A scripted model server: a real HTTP/1.1 server on loopback that streams OpenAI- and
Anthropic-format SSE from a script, with faults on demand, and records every request.

Use it from async tests (in the test's event loop):

    turns = [Turn(text="Hello"), Turn(tool_calls=[ToolCall("ls", {"path": "."})])]
    async with ScriptedModelServer(turns) as srv:
        provider = make_provider(
            "openai/gpt-test", route="direct", base_url=srv.base_url, api_key="k"
        )
        ...
        assert srv.requests[0].headers["authorization"] == "Bearer k"

or from sync code / across event loops (a bridge subprocess, Playwright), in its own thread:

    with ScriptedModelServer(turns).in_thread() as srv:
        ...

Each request consumes the next turn of the script, whatever its format: the path decides the
wire format (`.../chat/completions` → OpenAI Chat Completions, `.../messages` → Anthropic
Messages), so one script drives either adapter. A turn can also be a function of the
`RecordedRequest` returning a `Turn` (e.g. to answer depending on the tool results sent).
When the script runs out, the server answers 500 "script exhausted" so a test fails clearly.

A `Turn` describes the model's answer — `text` (a string, or a list of deltas), `tool_calls`
(parallel when several), `usage` — and optional faults: an error `status` (with `retry_after`),
`cut_after` N SSE events (the connection is dropped mid-stream), `stream_error` (an error event
inside the stream), `split` (write the wire bytes in tiny pieces, chunk-size lines included),
`interleave` (OpenAI: fragments of parallel calls interleaved), a malformed call (pass the
arguments as a raw string), `hang` (send what there is, then wait for the client to go away:
for cancellation tests; `client_gone` is set when it does), `echo_key` (put the received
credential into the error body, as providers echo a masked key).

`requests` holds every request received: method, path, lower-case headers, parsed JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

OPENAI = "openai"
ANTHROPIC = "anthropic"


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] | str  # a str is sent verbatim: use it for malformed JSON
    id: str | None = None  # default: call_<n> / toolu_<n>

    def raw(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass
class Turn:
    """One scripted response (see the module doc)."""

    text: str | list[str] = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: tuple[int, int] = (12, 7)  # (input tokens, output tokens)
    cached_tokens: int = 0  # prompt tokens served from the cache
    stop: str | None = None  # the wire's stop/finish reason, when not the natural one
    # -- faults ------------------------------------------------------------------------------
    status: int = 200
    error: str = ""  # the error message for status != 200
    error_type: str | None = None  # wire error type/code (default: from the status)
    retry_after: float | str | None = None  # sent as `retry-after` with the error
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    cut_after: int | None = None  # send only the first N SSE events, then drop the connection
    stream_error: str | None = None  # an in-stream error event after `cut_after` (or all) events
    split: int | None = None  # write the wire bytes in pieces of this size
    interleave: bool = False  # OpenAI: interleave argument fragments of parallel calls
    framing: Literal["chunked", "close", "length"] = "chunked"
    crlf: bool = False  # SSE lines end with CRLF instead of LF
    hang: bool = False  # after the events, wait for the client to disconnect
    echo_key: bool = False  # put the received API key into the error message

    @classmethod
    def fail(
        cls,
        status: int,
        error: str = "scripted failure",
        *,
        retry_after: float | str | None = None,
        error_type: str | None = None,
        echo_key: bool = False,
    ) -> Turn:
        return cls(
            status=status,
            error=error,
            retry_after=retry_after,
            error_type=error_type,
            echo_key=echo_key,
        )


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    raw: bytes

    @property
    def format(self) -> str:
        return ANTHROPIC if self.path.rstrip("/").endswith("/messages") else OPENAI


ScriptItem = Turn | Callable[[RecordedRequest], Turn]


class ScriptedModelServer:
    def __init__(self, turns: Iterable[ScriptItem] = (), *, ssl_context: Any = None) -> None:
        """`ssl_context`: an `ssl.SSLContext` (server side) to serve https instead of http."""
        self._ssl = ssl_context
        self._turns: deque[ScriptItem] = deque(turns)
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.preflights: list[RecordedRequest] = []  # CORS OPTIONS from browsers
        self.disconnects = 0  # hanging responses whose client went away
        self.client_gone = threading.Event()  # set when a `hang` turn's client disconnects
        self.port = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- script -------------------------------------------------------------------------------

    def script(self, turns: Iterable[ScriptItem]) -> None:
        """Replace what is left of the script (and forget past requests)."""
        with self._lock:
            self._turns = deque(turns)
            self.requests.clear()
            self.client_gone.clear()

    def add(self, *turns: ScriptItem) -> None:
        with self._lock:
            self._turns.extend(turns)

    @property
    def remaining(self) -> int:
        return len(self._turns)

    @property
    def base_url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    # -- lifecycle in the running loop ----------------------------------------------------

    async def start(self) -> ScriptedModelServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            if self._tasks:  # let responses that are finishing finish; cut hanging ones
                await asyncio.wait(set(self._tasks), timeout=1)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> ScriptedModelServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle in a thread of its own -------------------------------------------------

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[ScriptedModelServer]:
        """Run the server on its own event loop in a daemon thread, for sync or cross-loop use."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="model-server", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            loop.close()

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await self._read_request(reader)
            if request is None:
                return
            await self._respond(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a client that went away, or the server stopping: nothing to report
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        line = await reader.readline()
        if not line:
            return None
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while size := int((await reader.readline()).split(b";")[0], 16):
                raw += await reader.readexactly(size)
                await reader.readline()
            await reader.readline()
        elif "content-length" in headers:
            raw = await reader.readexactly(int(headers["content-length"]))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(method, target.split("?", 1)[0], headers, body, raw)
        with self._lock:
            if method == "OPTIONS":
                self.preflights.append(request)  # a browser's CORS check, not a model call
            else:
                self.requests.append(request)
        return request

    def _next_turn(self, request: RecordedRequest) -> Turn | None:
        with self._lock:
            item = self._turns.popleft() if self._turns else None
        if item is None or isinstance(item, Turn):
            return item
        return item(request)

    async def _respond(
        self, req: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        path = req.path.rstrip("/")
        if req.method == "OPTIONS":
            # CORS preflight, answered as the real APIs do for browser callers (the direct route).
            allow = {
                "access-control-allow-methods": "POST",
                "access-control-allow-headers": req.headers.get(
                    "access-control-request-headers", "content-type"
                ),
                "access-control-max-age": "600",
            }
            await _send_simple(writer, 204, None, allow)
            return
        if req.method != "POST" or not (
            path.endswith("/chat/completions") or path.endswith("/messages")
        ):
            await _send_simple(writer, 404, {"error": {"message": f"no route {req.path}"}})
            return
        turn = self._next_turn(req)
        if turn is None:
            await _send_simple(writer, 500, _error_body(req.format, 500, "script exhausted", None))
            return
        if turn.status != 200:
            message = turn.error
            if turn.echo_key:
                key = req.headers.get("x-api-key") or req.headers.get("authorization", "")
                message = f"{message}: Incorrect API key provided: {key.removeprefix('Bearer ')}"
            extra = dict(turn.headers)
            if turn.retry_after is not None:
                extra["retry-after"] = str(turn.retry_after)
            body = _error_body(req.format, turn.status, message, turn.error_type)
            await _send_simple(writer, turn.status, body, extra)
            return
        if not isinstance(req.body, dict) or req.body.get("stream") is not True:
            await _send_simple(writer, 400, {"error": {"message": "this server only streams"}})
            return
        events = _openai_events(turn, req.body) if req.format == OPENAI else _anthropic_events(turn)
        eol = "\r\n" if turn.crlf else "\n"
        wire_events = [e.replace("\n", eol).encode() for e in events]
        complete = turn.cut_after is None and turn.stream_error is None and not turn.hang
        if turn.cut_after is not None:
            wire_events = wire_events[: turn.cut_after]
        if turn.stream_error is not None:
            wire_events.append(_stream_error_event(req.format, turn.stream_error).encode())
        await self._send_stream(writer, turn, wire_events, complete)
        if turn.hang:
            with contextlib.suppress(ConnectionError):
                while await reader.read(1024):
                    pass
            self.disconnects += 1
            self.client_gone.set()

    async def _send_stream(
        self, writer: asyncio.StreamWriter, turn: Turn, events: list[bytes], complete: bool
    ) -> None:
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache", **turn.headers}
        if turn.framing == "chunked":
            headers["transfer-encoding"] = "chunked"
            pieces = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
            if complete:
                pieces.append(b"0\r\n\r\n")
        elif turn.framing == "length":
            full = b"".join(events)
            headers["content-length"] = str(len(full) + (0 if complete else 100))
            pieces = [full]
        else:
            pieces = list(events)
        headers.setdefault("access-control-allow-origin", "*")
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += "connection: close\r\n\r\n"
        wire = head.encode() + b"".join(pieces)
        step = turn.split or len(wire)
        sock = writer.get_extra_info("socket")
        if turn.split and sock is not None:  # no Nagle: small writes leave as small segments
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(wire), step):
            writer.write(wire[i : i + step])
            await writer.drain()
            if turn.split:
                await asyncio.sleep(0.001)  # let it leave as its own TCP segment
        if not complete and not turn.hang:
            writer.transport.abort()  # drop the connection mid-stream


async def _send_simple(
    writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} Scripted", "content-type: application/json"]
    lines.append("access-control-allow-origin: *")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += [f"content-length: {len(data)}", "connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    await writer.drain()


_ERROR_TYPES = {
    OPENAI: {401: "invalid_api_key", 429: "rate_limit_exceeded", 400: "invalid_request_error"},
    ANTHROPIC: {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        400: "invalid_request_error",
        529: "overloaded_error",
    },
}


def _error_body(fmt: str, status: int, message: str, error_type: str | None) -> dict[str, Any]:
    default = "api_error" if fmt == ANTHROPIC else "server_error"
    etype = error_type or _ERROR_TYPES[fmt].get(status, default)
    if fmt == ANTHROPIC:
        return {"type": "error", "error": {"type": etype, "message": message}}
    return {"error": {"message": message, "type": etype, "code": etype}}


def _stream_error_event(fmt: str, message: str) -> str:
    if fmt == ANTHROPIC:
        data = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        return f"event: error\ndata: {json.dumps(data)}\n\n"
    return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"


def _text_pieces(text: str | list[str]) -> list[str]:
    if isinstance(text, list):
        return text
    if not text:
        return []
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _fragments(raw: str) -> list[str]:
    """Split an argument string into 3 uneven pieces (mid-token), as providers do."""
    if len(raw) < 3:
        return [raw] if raw else []
    a, b = len(raw) // 3, 2 * len(raw) // 3 + 1
    return [raw[:a], raw[a:b], raw[b:]]


def _openai_events(turn: Turn, body: dict[str, Any]) -> list[str]:
    model = str(body.get("model", "scripted"))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        obj = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(obj)}\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _text_pieces(turn.text)]
    starts: list[str] = []
    frags: list[list[str]] = []
    for i, call in enumerate(turn.tool_calls):
        head = {
            "index": i,
            "id": call.id or f"call_{i}",
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        starts.append(chunk({"tool_calls": [head]}))
        frags.append(
            [
                chunk({"tool_calls": [{"index": i, "function": {"arguments": f}}]})
                for f in _fragments(call.raw())
            ]
        )
    if turn.interleave:
        events += starts
        for group in _round_robin(frags):
            events.append(group)
    else:
        for start, group in zip(starts, frags, strict=True):
            events += [start, *group]
    finish = turn.stop or ("tool_calls" if turn.tool_calls else "stop")
    events.append(chunk({}, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt, completion = turn.usage
        usage = {
            "prompt_tokens": prompt + turn.cached_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt + turn.cached_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": turn.cached_tokens},
        }
        obj = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "choices": []}
        events.append(f"data: {json.dumps({**obj, 'usage': usage})}\n\n")
    events.append("data: [DONE]\n\n")
    return events


def _round_robin(groups: list[list[str]]) -> Iterator[str]:
    longest = max((len(g) for g in groups), default=0)
    for i in range(longest):
        for g in groups:
            if i < len(g):
                yield g[i]


def _anthropic_events(turn: Turn) -> list[str]:
    def ev(obj: dict[str, Any]) -> str:
        return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n"

    prompt, completion = turn.usage
    events = [
        ev(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_scripted",
                    "type": "message",
                    "role": "assistant",
                    "model": "scripted",
                    "content": [],
                    "stop_reason": None,
                    "usage": {
                        "input_tokens": prompt,
                        "output_tokens": 1,
                        "cache_read_input_tokens": turn.cached_tokens,
                        "cache_creation_input_tokens": 0,
                    },
                },
            }
        ),
        ev({"type": "ping"}),
    ]
    index = 0
    pieces = _text_pieces(turn.text)
    if pieces:
        events.append(
            ev(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                }
            )
        )
        for piece in pieces:
            delta = {"type": "text_delta", "text": piece}
            events.append(ev({"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(ev({"type": "content_block_stop", "index": index}))
        index += 1
    for i, call in enumerate(turn.tool_calls):
        block = {"type": "tool_use", "id": call.id or f"toolu_{i}", "name": call.name, "input": {}}
        events.append(ev({"type": "content_block_start", "index": index, "content_block": block}))
        for frag in _fragments(call.raw()):
            delta = {"type": "input_json_delta", "partial_json": frag}
            events.append(ev({"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(ev({"type": "content_block_stop", "index": index}))
        index += 1
    stop = turn.stop or ("tool_use" if turn.tool_calls else "end_turn")
    events.append(
        ev(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": completion},
            }
        )
    )
    events.append(ev({"type": "message_stop"}))
    return events
