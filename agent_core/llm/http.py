"""The HTTP seam between provider adapters and the network, with two implementations here.

A provider needs one thing from the network: send one request, get the status and headers, then
the body as it arrives. That is the whole `HttpClient` interface:

    async def stream(method, url, headers, body) -> HttpResponse(status, headers, body_iterator)

- `headers` (request) is a dict; response headers come back with lower-case names (repeated
  headers joined with ", ").
- `body_iterator` is an async iterator of `bytes` pieces, in whatever sizes the network gives,
  with an `aclose()` method. The caller consumes it to the end or closes it
  (`contextlib.aclosing`); closing it — even unread — or cancelling the task reading it closes
  the connection at once.
- Failures raise `HttpError` (connect, TLS, timeout, a body cut short). `retryable` says whether
  trying again later may help. A non-2xx status is not an exception: the adapter turns the
  status and error body into a `ProviderError`.
- No redirects, no cookies, no compression (`Accept-Encoding: identity`), no connection reuse.

Implementations:

- `AsyncioHttpClient` (CPython, and the bridge's relay op): HTTP/1.1 over
  `asyncio.open_connection`, http and https. Chosen over `http.client` in a worker thread: a
  cancelled turn closes its socket immediately (a blocked thread cannot be interrupted), there is
  no thread per stream, and the bridge can use the same code without ever blocking its loop.
  `ssl` is imported only when an https URL is used (under Pyodide it is a separate package).
  Timeouts: 30 s to connect, 600 s of silence between reads (long reasoning pauses).
- `BridgeHttpClient` (any runtime): the same call through the bridge's `model.stream` op, for
  URLs `bridge://<provider>/<api path>`. The host picks the base URL and adds the key, so the
  device never holds it; see that class and docs/protocol.md.
- `FetchHttpClient` (Pyodide, `agent_core/llm/http_pyodide.py`): the JS `fetch`, the body read
  from its `ReadableStream` reader as it arrives; `aclose()` cancels the reader and aborts the
  request. `default_http_client()` (via `agent_core.runtime`) picks it under Pyodide.

Everything here imports only the standard library at import time.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from agent_core.llm.types import ProviderError
from agent_core.rpc.errors import RpcError

if TYPE_CHECKING:
    from agent_core.client import KiteClient

USER_AGENT = "kite-agent/0.1"
MAX_HEAD_LINE = 64 * 1024
MAX_HEADERS = 200
READ_SIZE = 64 * 1024


@dataclass
class ApiRequest:
    """One provider call as the adapters build it: no credentials, no host (sans-I/O)."""

    method: str
    path: str  # the canonical API path, e.g. /v1/chat/completions
    headers: dict[str, str]  # WITHOUT the API key: the route adds it (host or device)
    body: dict[str, Any]

    def encode_body(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


class HttpError(ConnectionError):
    """The HTTP exchange failed before a complete response was read."""

    def __init__(self, message: str, *, retryable: bool = True, during_body: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.during_body = during_body  # part of the body had already been delivered


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: AsyncIterator[bytes]  # has `aclose()`: consume the body to its end, or close it


class _Body:
    """A response body: iterates a generator; `aclose()` also releases the connection when the
    body was never started (closing an unstarted generator does not run its `finally`)."""

    def __init__(
        self, gen: AsyncGenerator[bytes, None], release: Callable[[], Awaitable[None]]
    ) -> None:
        self._gen = gen
        self._release = release

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            await self._release()


class HttpClient(Protocol):
    async def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        """Send one request; return once the status line and headers have arrived."""
        ...


def default_http_client() -> HttpClient:
    """The direct-route client for this runtime (chosen in `agent_core.runtime`)."""
    from agent_core.runtime import default_http_client as pick

    return pick()


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date), or None."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def status_error(
    label: str, status: int, headers: Mapping[str, str], detail: str, *, code: str = ""
) -> ProviderError:
    """The ProviderError an HTTP error status means, with a message a user can act on.

    `label` names the API ("OpenAI", "Anthropic"); `detail` is the provider's own message;
    `code` its machine-readable error code/type when it gave one.
    """
    retry_after = parse_retry_after(headers)
    detail = detail.strip() or "(no details)"
    req_id = headers.get("request-id") or headers.get("x-request-id")
    suffix = f" [request id {req_id}]" if req_id else ""
    retryable = False
    if status == 401:
        msg = f"{label} rejected the API key (HTTP 401): {detail}"
    elif status == 403:
        msg = f"{label} refused access (HTTP 403): {detail}"
    elif status == 404:
        msg = f"{label} API: not found (HTTP 404): {detail}. Check the model name and base URL"
    elif status == 413:
        msg = f"{label} API: the request is too large (HTTP 413): {detail}"
    elif status == 429:
        if code == "insufficient_quota":
            msg = f"{label} API: quota exhausted (HTTP 429): {detail}"
        else:
            retryable = True
            msg = f"{label} API: rate limited (HTTP 429): {detail}"
    elif status in (408, 409):
        retryable = True
        msg = f"{label} API: HTTP {status}: {detail}"
    elif status == 529 or code == "overloaded_error":
        retryable = True
        msg = f"{label} API is overloaded (HTTP {status}): {detail}"
    elif status >= 500:
        retryable = True
        msg = f"{label} API server error (HTTP {status}): {detail}"
    else:
        msg = f"{label} API error (HTTP {status}): {detail}"
    should = headers.get("x-should-retry", "").lower()
    if should in ("true", "false") and code != "insufficient_quota":
        retryable = should == "true"
    return ProviderError(
        msg + suffix, status=status, retryable=retryable, retry_after_s=retry_after
    )


def error_detail(body: bytes, limit: int = 1000) -> tuple[str, str]:
    """(message, code) from an error body: OpenAI, Anthropic, vLLM, Ollama shapes, or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:limit], ""
    message, code = "", ""
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, str):
            message = err
        elif isinstance(err, dict):
            message = str(err.get("message") or "")
            raw_code = err.get("code") or err.get("type") or ""
            code = str(raw_code) if isinstance(raw_code, (str, int)) else ""
            if isinstance(err.get("type"), str) and err.get("type") == "insufficient_quota":
                code = "insufficient_quota"
    return (message or text)[:limit], code


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the server closed the connection"
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 300 else text[:300] + "..."


# -- CPython: HTTP/1.1 over asyncio streams ---------------------------------------------------


class AsyncioHttpClient:
    """HTTP/1.1 client over asyncio streams (see the module doc for why not a thread)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 30.0,
        read_timeout_s: float = 600.0,  # silence allowed between two reads (long reasoning)
        ssl_context: Any = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.ssl_context = ssl_context

    async def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        host = parts.hostname
        port = parts.port or (443 if tls else 80)
        origin = f"{parts.scheme}://{host}:{port}"
        ctx = None
        if tls:
            import ssl  # lazy: a separate package under Pyodide

            ctx = self.ssl_context or ssl.create_default_context()
        request = _encode_request(method, parts, host, port, tls, headers, body)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=host if tls else None, limit=MAX_HEAD_LINE
                )
        except (OSError, TimeoutError) as exc:
            # A certificate that does not verify will not verify on a retry either.
            bad_cert = ctx is not None and isinstance(exc, ssl.SSLCertVerificationError)
            raise HttpError(
                f"cannot connect to {origin}: {_describe(exc)}", retryable=not bad_cert
            ) from exc
        ok = False
        try:
            writer.write(request)
            async with asyncio.timeout(self.read_timeout_s):
                await writer.drain()
            status, resp_headers = await self._read_head(reader)
            ok = True
        except HttpError:
            raise
        except (OSError, TimeoutError, EOFError, ValueError) as exc:
            raise HttpError(f"no valid HTTP response from {origin}: {_describe(exc)}") from exc
        finally:
            if not ok:
                writer.transport.abort()

        async def release() -> None:
            if not writer.transport.is_closing():
                writer.transport.abort()

        body_iter = self._body(reader, writer, resp_headers, method, status, origin)
        return HttpResponse(status, resp_headers, _Body(body_iter, release))

    # Timeouts use `asyncio.timeout`, not `wait_for`: on Python 3.11, `wait_for` drops a
    # cancellation that arrives as the read completes, and a cancelled turn must close its socket.
    async def _readline(self, reader: asyncio.StreamReader) -> bytes:
        async with asyncio.timeout(self.read_timeout_s):
            return await reader.readline()

    async def _read(self, reader: asyncio.StreamReader, n: int) -> bytes:
        async with asyncio.timeout(self.read_timeout_s):
            return await reader.read(n)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        while True:
            line = await self._readline(reader)
            if not line:
                raise EOFError("connection closed before the status line")
            version, _, rest = line.decode("latin-1").strip().partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise ValueError(f"bad status line {line[:80]!r}")
            status = int(code)
            headers = await self._read_headers(reader)
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue, 103 Early Hints: the real response follows
            return status, headers

    async def _read_headers(self, reader: asyncio.StreamReader) -> dict[str, str]:
        headers: dict[str, str] = {}
        last = ""
        for _ in range(MAX_HEADERS + 1):
            line = (await self._readline(reader)).decode("latin-1")
            if not line:
                raise EOFError("connection closed inside the headers")
            line = line.rstrip("\r\n")
            if not line:
                return headers
            if line[0] in " \t" and last:  # obsolete line folding
                headers[last] += " " + line.strip()
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"bad header line {line[:80]!r}")
            last = name.strip().lower()
            value = value.strip()
            headers[last] = f"{headers[last]}, {value}" if last in headers else value
        raise ValueError("too many response headers")

    async def _body(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        method: str,
        status: int,
        origin: str,
    ) -> AsyncGenerator[bytes, None]:
        complete = False
        delivered = False
        try:
            if method == "HEAD" or status in (204, 304):
                complete = True
                return
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await self._readline(reader)
                    if not size_line:
                        raise EOFError("connection closed between chunks")
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        while (await self._readline(reader)).strip():
                            pass  # trailers
                        break
                    while size:
                        data = await self._read(reader, min(size, READ_SIZE))
                        if not data:
                            raise EOFError("connection closed inside a chunk")
                        size -= len(data)
                        delivered = True
                        yield data
                    if (await self._readline(reader)).strip():
                        raise ValueError("missing CRLF after a chunk")
            elif "content-length" in headers:
                left = int(headers["content-length"])
                while left > 0:
                    data = await self._read(reader, min(left, READ_SIZE))
                    if not data:
                        raise EOFError(f"connection closed with {left} bytes of the body missing")
                    left -= len(data)
                    delivered = True
                    yield data
            else:  # delimited by the end of the connection
                while data := await self._read(reader, READ_SIZE):
                    delivered = True
                    yield data
            complete = True
        except (OSError, TimeoutError, EOFError, ValueError) as exc:
            raise HttpError(
                f"the response from {origin} was cut short: {_describe(exc)}", during_body=delivered
            ) from exc
        finally:
            if complete:
                writer.close()
            else:
                writer.transport.abort()  # cancelled or failed: drop the connection now


def _encode_request(
    method: str,
    parts: Any,
    host: str,
    port: int,
    tls: bool,
    headers: Mapping[str, str],
    body: bytes | None,
) -> bytes:
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        host_header += f":{port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
    given = {k.lower() for k in headers}
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"invalid header {name!r}")
        if name.lower() in ("host", "content-length", "connection", "transfer-encoding"):
            continue
        lines.append(f"{name}: {value}")
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept-encoding" not in given:
        lines.append("Accept-Encoding: identity")
    lines.append("Connection: close")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


# -- any runtime: through the bridge's model.stream op -----------------------------------------

_CALL_DONE = object()
# Bridge error codes after which trying again may help.
_RETRYABLE_CODES = frozenset({"EIO", "ETIMEDOUT", "EBUSY", "ECANCELED"})


class BridgeHttpClient:
    """The HTTP seam over a `KiteClient`: `bridge://<provider>/<path>` via the `model.stream` op.

    The request body (JSON) becomes the op's `body` argument; request headers are dropped — the
    host sets its own (content type, key, API version). The response arrives as a `response`
    event `{"status", "headers"}`, then the body as binary data chunks (raw bytes, no base64 or
    JSON escaping), then the op's result `{"status", "headers", "bytes", "complete"}`; a result
    with `complete: false` means the upstream connection broke mid-body → `HttpError`.
    Closing the body (or cancelling the reader) cancels the op, which closes the upstream socket.
    """

    def __init__(self, client: KiteClient) -> None:
        self.client = client

    async def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        parts = urlsplit(url)
        if parts.scheme != "bridge" or not parts.netloc:
            raise ValueError(f"not a bridge:// URL: {url!r}")
        if method != "POST":
            raise ValueError("the bridge relays POST requests only")
        args = {"provider": parts.netloc, "path": parts.path, "body": json.loads(body or b"{}")}
        loop = asyncio.get_running_loop()
        head: asyncio.Future[Any] = loop.create_future()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_event(name: str, data: Any) -> None:
            if name == "response" and not head.done():
                head.set_result(data)

        def on_chunk(payload: bytes, final: bool) -> None:
            if payload:
                queue.put_nowait(payload)

        call = loop.create_task(
            self.client.call("model.stream", args, on_event=on_event, on_chunk=on_chunk)
        )
        call.add_done_callback(lambda _: queue.put_nowait(_CALL_DONE))
        try:
            await asyncio.wait({head, call}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            call.cancel()
            raise
        if not head.done():
            self._raise_outcome(call)  # the op ended without a response: always raises
            raise HttpError("the bridge answered model.stream without a response")
        data = head.result() if isinstance(head.result(), dict) else {}
        status = data.get("status")
        if not isinstance(status, int):
            call.cancel()
            raise HttpError("the bridge sent a malformed model.stream response event")
        raw_headers = data.get("headers") or {}
        resp_headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}

        async def release() -> None:
            if not call.done():
                call.cancel()  # KiteClient.call sends `cancel`; the bridge closes upstream
                await asyncio.wait({call})

        return HttpResponse(status, resp_headers, _Body(self._body(call, queue), release))

    async def _body(
        self, call: asyncio.Task[dict[str, Any]], queue: asyncio.Queue[Any]
    ) -> AsyncGenerator[bytes, None]:
        delivered = False
        try:
            while (item := await queue.get()) is not _CALL_DONE:
                delivered = True
                yield item
            result = self._raise_outcome(call, during_body=delivered)
            if not result.get("complete", True):
                reason = result.get("error") or "the upstream connection broke"
                raise HttpError(
                    f"the provider's response was cut short: {reason}", during_body=True
                )
        finally:
            if not call.done():
                call.cancel()
                await asyncio.wait({call})

    @staticmethod
    def _raise_outcome(call: asyncio.Task[dict[str, Any]], during_body: bool = False) -> Any:
        """The op's result, or the HttpError its failure means."""
        try:
            return call.result()
        except RpcError as exc:
            retryable = exc.code in _RETRYABLE_CODES
            if exc.code == "EUNSUPPORTED":
                msg = "this bridge does not relay model calls (model.stream); upgrade it"
            else:
                msg = f"the bridge could not relay the model call: {exc.message} ({exc.code})"
            raise HttpError(msg, retryable=retryable, during_body=during_body) from exc
        except ConnectionError as exc:  # ChannelClosed
            raise HttpError(
                f"lost the connection to the bridge: {exc}", during_body=during_body
            ) from exc
