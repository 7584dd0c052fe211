"""The direct-route `HttpClient` under Pyodide: the JavaScript `fetch`, body read as it arrives.

In a browser (and in Node, where the tests run it) there are no sockets for Python; `fetch` is
the only way out. This follows the contract in `agent_core/llm/http.py`:

- response header names are lower case (fetch already gives them so); in a browser only the
  headers the provider exposes through CORS are visible, which is why status and body, not
  headers, carry everything the adapters need;
- the body comes from the `ReadableStream` reader, one `Uint8Array` per network read, so SSE
  events reach the parser as they arrive (no buffering of the whole response);
- `aclose()` (or cancelling the reading task) cancels the reader and aborts the request through
  an `AbortController`, which closes the connection;
- a network failure, a timeout, or a body cut short raises `HttpError` (retryable), a refused
  redirect `HttpError(retryable=False)`.

Headers the browser forbids scripts to set (Host, Content-Length, Connection, ...) are dropped
rather than sent: fetch would refuse the request or silently ignore them.

Imports `js`/`pyodide` lazily, in the calls: importing this module works on CPython too (the
runtime-neutral import test imports every module).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import urlsplit

from agent_core.llm.http import HttpError, HttpResponse, _Body

# Request headers a page may not set (the Fetch standard's forbidden names, lower case).
FORBIDDEN = frozenset(
    {
        "accept-charset",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "connection",
        "content-length",
        "cookie",
        "cookie2",
        "date",
        "dnt",
        "expect",
        "host",
        "keep-alive",
        "origin",
        "referer",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
    }
)


def _message(exc: BaseException) -> str:
    """A JS error's own message ("fetch failed", "terminated"), with its cause when it has one."""
    text = str(exc).strip() or type(exc).__name__
    js_error = getattr(exc, "js_error", None)
    cause = getattr(js_error, "cause", None) if js_error is not None else None
    if cause is not None:
        detail = str(getattr(cause, "message", "") or getattr(cause, "code", "") or "")
        if detail and detail not in text:
            text = f"{text} ({detail})"
    return text if len(text) < 300 else text[:300] + "..."


class FetchHttpClient:
    """`HttpClient` over the JS `fetch` (see the module doc)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 30.0,  # until the status line and headers
        read_timeout_s: float = 600.0,  # silence allowed between two body reads
        fetch: Any = None,  # the JS fetch to use (default: the global one)
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._fetch = fetch

    async def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        import js
        from pyodide.ffi import JsException, to_js

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        origin = f"{parts.scheme}://{parts.netloc}"
        send = {k: str(v) for k, v in headers.items() if k.lower() not in FORBIDDEN}
        init: dict[str, Any] = {
            "method": method,
            "headers": to_js(send, dict_converter=js.Object.fromEntries),
            "redirect": "manual",
            "cache": "no-store",
            "credentials": "omit",
        }
        if body is not None:
            data = js.Uint8Array.new(len(body))
            data.assign(body)
            init["body"] = data
        controller = js.AbortController.new()
        init["signal"] = controller.signal
        fetch = self._fetch if self._fetch is not None else js.fetch
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                response = await fetch(url, to_js(init, dict_converter=js.Object.fromEntries))
        except TimeoutError as exc:
            controller.abort()
            raise HttpError(f"cannot connect to {origin}: timed out") from exc
        except asyncio.CancelledError:
            controller.abort()
            raise
        except JsException as exc:
            raise HttpError(f"cannot connect to {origin}: {_message(exc)}") from exc
        status = int(response.status)
        if status == 0 or str(response.type) == "opaqueredirect" or 300 <= status < 400:
            controller.abort()
            raise HttpError(f"{origin} answered with a redirect; not followed", retryable=False)
        resp_headers: dict[str, str] = {}
        for entry in response.headers.entries():
            name, value = str(entry[0]).lower(), str(entry[1])
            resp_headers[name] = f"{resp_headers[name]}, {value}" if name in resp_headers else value
        stream = response.body
        reader = stream.getReader() if stream is not None else None
        state = {"done": reader is None}

        def stop() -> None:
            """Cancel the reader and abort the request, unless the body was read to its end."""
            if not state["done"]:
                state["done"] = True
                if reader is not None:
                    with contextlib.suppress(Exception):
                        reader.cancel()  # a promise; nothing to wait for
                controller.abort()

        async def release() -> None:
            stop()

        body = _Body(self._body(reader, state, stop, origin), release)
        return HttpResponse(status, resp_headers, body)

    async def _body(
        self, reader: Any, state: dict[str, bool], stop: Any, origin: str
    ) -> AsyncGenerator[bytes, None]:
        from pyodide.ffi import JsException

        if reader is None:
            return
        delivered = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self.read_timeout_s):
                        chunk = await reader.read()
                except TimeoutError as exc:
                    raise HttpError(
                        f"no data from {origin} for {self.read_timeout_s:g} s",
                        during_body=delivered,
                    ) from exc
                except JsException as exc:
                    raise HttpError(
                        f"the response from {origin} was cut short: {_message(exc)}",
                        during_body=delivered,
                    ) from exc
                if chunk.done:
                    state["done"] = True
                    return
                piece = chunk.value.to_bytes()
                if piece:
                    delivered = True
                    yield piece
        finally:
            stop()
