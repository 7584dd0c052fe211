"""Which runtime agent_core is on, and the platform implementations that go with it.

agent_core imports only the standard library at import time, so the choice between the CPython
implementations (`cryptography`, `websockets`, asyncio HTTP) and the Pyodide ones (WebCrypto,
the JS ``WebSocket``, ``fetch``) is made here, lazily, inside the functions: importing this
module loads none of them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_core.channel.crypto import CryptoBackend
    from agent_core.llm.http import HttpClient
    from agent_core.transport.base import ByteTransport

IS_PYODIDE = sys.platform == "emscripten"
"""True under Pyodide (WebAssembly, in a browser or in Node), where there are no sockets or
``cryptography`` and every I/O call goes through JavaScript."""


def default_crypto_backend() -> CryptoBackend:
    """Return this runtime's `CryptoBackend`: WebCrypto under Pyodide, `cryptography` on CPython."""
    if IS_PYODIDE:
        from agent_core.channel.crypto_webcrypto import WebCryptoBackend

        return WebCryptoBackend()
    from agent_core.channel.crypto_cpython import CpythonCryptoBackend

    return CpythonCryptoBackend()


def use_native_json() -> bool:
    """Encode and parse envelopes with orjson where it is installed (CPython): several times
    faster on a file-sized reply (agent_core/rpc/json_orjson.py). Under Pyodide, and without
    orjson, envelopes keep the standard library's C json. True when orjson is in use."""
    if IS_PYODIDE:
        return False
    try:
        from agent_core.rpc import json_orjson
    except ImportError:
        return False
    json_orjson.install()
    return True


async def open_transport(url: str, subprotocol: str) -> ByteTransport:
    """Open a WebSocket to ``url`` offering exactly ``subprotocol``, with this runtime's client.

    Raises `ConnectionError` (`TransportClosed` or ``HandshakeRejected``) when it cannot connect.
    """
    if IS_PYODIDE:
        from agent_core.transport.ws_browser import open_browser_websocket

        return await open_browser_websocket(url, subprotocol)
    from agent_core.transport.ws_cpython import open_websocket

    return await open_websocket(url, subprotocol)


def default_http_client() -> HttpClient:
    """The HTTP client for direct provider calls: `fetch` under Pyodide, asyncio streams on
    CPython (both in agent_core/llm/)."""
    if IS_PYODIDE:
        from agent_core.llm.http_pyodide import FetchHttpClient

        return FetchHttpClient()
    from agent_core.llm.http import AsyncioHttpClient

    return AsyncioHttpClient()
