"""Providers: an adapter (wire format) + an HTTP route (bridge relay or direct) + retries.

    provider = make_provider("anthropic/claude-sonnet-4-5", route="bridge", client=kite_client)
    async for event in provider.stream(request):   # TextDelta / ToolCallDelta ..., then TurnEnd
        ...

Routes:
- `bridge` (default): requests go through the bridge's `model.stream` op; the host chooses the
  base URL and adds the key from its own environment (`OPENAI_API_KEY`/`OPENAI_BASE_URL`,
  `ANTHROPIC_API_KEY`/`ANTHROPIC_BASE_URL`) or config. The device never holds a key, so this
  route refuses one.
- `direct`: the device calls the provider itself with `api_key`/`base_url` (on CPython they
  default to the same environment variables, and the base URL to the public API).

Retry policy (`RetryPolicy`): up to 3 attempts in all, only for retryable errors (429, 408,
409, 5xx, 529, network failures, a cut stream) and only while nothing of the turn has been
yielded yet — a retry after output would make the caller show text twice. Waits double from
1 s with a little jitter, or follow the server's `retry-after`; a `retry-after` longer than
`max_delay_s` is not waited out but reported. After output, a failure raises ProviderError with
`partial` = what was streamed; the conversation itself (the request's messages) is untouched, so
the caller can retry the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Literal

from agent_core.llm import anthropic, openai
from agent_core.llm.http import BridgeHttpClient, HttpClient, HttpError, default_http_client
from agent_core.llm.sse import SSEError, SSEParser
from agent_core.llm.types import ModelRequest, ProviderError, StreamEvent, TurnEnd

Route = Literal["bridge", "direct"]
ADAPTERS: dict[str, ModuleType] = {"openai": openai, "anthropic": anthropic}
MAX_ERROR_BODY = 256 * 1024
# (error, the attempt about to start (2, 3...), seconds until it starts)
OnRetry = Callable[[ProviderError, int, float], Any]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: float = 0.25  # up to +25%, so clients rate-limited together do not retry together

    def delay(self, attempt: int, error: ProviderError) -> float | None:
        """Seconds to wait before the next attempt after `attempt` failed, or None: give up."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= self.max_delay_s else None
        backoff = self.base_delay_s * 2 ** (attempt - 1)
        return min(self.max_delay_s, backoff * (1 + random.uniform(0, self.jitter)))


class HttpProvider:
    """One model behind one wire format and one route; `stream` is the `Provider` protocol."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        http: HttpClient,
        route: Route,
        base_url: str,
        api_key: str | None = None,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.model = model
        self.route = route
        self.adapter = ADAPTERS[name]
        self.http = http
        self.base_url = base_url
        self._api_key = api_key
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._sleep = sleep

    def __repr__(self) -> str:  # never shows the key
        return f"HttpProvider({self.name}/{self.model}, route={self.route})"

    def _model_for(self, request: ModelRequest) -> str:
        model = request.model or self.model
        prefix = self.name + "/"
        return model[len(prefix) :] if model.startswith(prefix) else model

    def _url_and_headers(self, path: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        if self.route == "bridge":
            return f"bridge://{self.name}{path}", headers
        url = self.adapter.endpoint_url(self.base_url, path)
        return url, {**headers, **self.adapter.auth_headers(self._api_key)}

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Yield the turn's deltas, then exactly one TurnEnd; raise ProviderError (see module)."""
        api = self.adapter.build_request(replace(request, model=self._model_for(request)))
        url, headers = self._url_and_headers(api.path, api.headers)
        body = api.encode_body()
        attempt = 1
        while True:
            yielded = False
            try:
                attempt_events = self._attempt(url, headers, body)
                async with contextlib.aclosing(attempt_events):  # closes the connection early
                    async for event in attempt_events:
                        yielded = True
                        yield event
                return
            except ProviderError as err:
                if yielded:
                    raise
                delay = self.retry.delay(attempt, err)
                if delay is None:
                    raise self._with_hint(err) from err.__cause__
                attempt += 1
                if self.on_retry is not None:
                    self.on_retry(err, attempt, delay)
                await self._sleep(delay)

    async def _attempt(
        self, url: str, headers: dict[str, str], body: bytes
    ) -> AsyncIterator[StreamEvent]:
        label = self.adapter.LABEL
        decoder = self.adapter.StreamDecoder()
        try:
            response = await self.http.stream("POST", url, headers, body)
        except HttpError as exc:
            raise ProviderError(f"{label} API: {exc}", retryable=exc.retryable) from exc
        async with contextlib.aclosing(response.body) as pieces:  # type: ignore[type-var]
            ctype = response.headers.get("content-type", "")
            if not 200 <= response.status < 300 or "json" in ctype:
                data = bytearray()
                with contextlib.suppress(HttpError):
                    async for piece in pieces:
                        data += piece
                        if len(data) > MAX_ERROR_BODY:
                            break
                if not 200 <= response.status < 300:
                    raise self.adapter.parse_error(response.status, response.headers, bytes(data))
                raise ProviderError(
                    f"{label} API: expected an event stream, got {ctype}: "
                    f"{bytes(data[:500]).decode('utf-8', 'replace')}"
                )
            parser = SSEParser()
            try:
                async for piece in pieces:
                    for sse in parser.feed(piece):
                        for event in decoder.feed(sse):
                            yield event
                        if decoder.done:
                            break
                    if decoder.done:
                        break
                else:
                    for sse in parser.close():
                        for event in decoder.feed(sse):
                            yield event
                if decoder.done:
                    await _drain(pieces)
            except HttpError as exc:
                raise ProviderError(
                    f"{label} API: {exc}", retryable=exc.retryable, partial=decoder.partial()
                ) from exc
            except SSEError as exc:
                raise ProviderError(
                    f"{label} API: unreadable response stream: {exc}",
                    retryable=True,
                    partial=decoder.partial(),
                ) from exc
        end: TurnEnd = decoder.finish()
        yield end

    def _with_hint(self, err: ProviderError) -> ProviderError:
        """Say where the key came from when it was rejected: the fix differs per route."""
        if err.status != 401:
            return err
        env = f"{self.name.upper()}_API_KEY"
        where = (
            f"the key is the bridge host's {env} (or its config)"
            if self.route == "bridge"
            else "the key is the one given to this device"
        )
        return ProviderError(
            f"{err} ({where})",
            status=err.status,
            retryable=err.retryable,
            retry_after_s=err.retry_after_s,
            partial=err.partial,
        )


async def _drain(pieces: AsyncIterator[bytes], timeout_s: float = 2.0) -> None:
    """Read what follows the end of the turn (usually nothing) so the exchange ends cleanly —
    over the bridge an unfinished body would mean cancelling the op — but never wait long."""
    with contextlib.suppress(HttpError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            async for _ in pieces:
                pass


def make_provider(
    spec: str,
    *,
    route: Route = "bridge",
    client: Any = None,
    api_key: str | None = None,
    base_url: str | None = None,
    http: HttpClient | None = None,
    retry: RetryPolicy | None = None,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> HttpProvider:
    """A provider for `openai/<model>` or `anthropic/<model>` over the given route.

    bridge: `client` is a connected `KiteClient` (or pass `http` directly); no key, no URL.
    direct: `api_key`/`base_url` default to `<PROVIDER>_API_KEY`/`<PROVIDER>_BASE_URL` from the
    environment, then the public API; `http` defaults to this runtime's client.
    """
    name, sep, model = spec.partition("/")
    if not sep or not model or name not in ADAPTERS:
        raise ValueError(f"model must be openai/<model> or anthropic/<model>, not {spec!r}")
    adapter = ADAPTERS[name]
    if route == "bridge":
        if api_key is not None or base_url is not None:
            raise ValueError("the bridge route uses the host's key and URL; do not pass them")
        if http is None:
            if client is None:
                raise ValueError("the bridge route needs client= (a connected KiteClient)")
            http = BridgeHttpClient(client)
        base = f"bridge://{name}"
    elif route == "direct":
        prefix = name.upper()
        api_key = api_key or os.environ.get(f"{prefix}_API_KEY") or None
        base = base_url or os.environ.get(f"{prefix}_BASE_URL") or adapter.DEFAULT_BASE_URL
        http = http or default_http_client()
    else:
        raise ValueError(f"route must be 'bridge' or 'direct', not {route!r}")
    return HttpProvider(
        name,
        model,
        http=http,
        route=route,
        base_url=base,
        api_key=api_key,
        retry=retry,
        on_retry=on_retry,
        sleep=sleep,
    )
