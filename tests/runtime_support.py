"""What runtime-neutral tests take from the runtime they run on: one suite, two runtimes.

The agent_core tests run on CPython (``pytest``) and inside Pyodide under Node
(``tests/pyodide/run.mjs``). They differ in three places, all here:

* the crypto backend: `cryptography` on CPython, WebCrypto under Pyodide (`backend`);
* how synchronous test code runs a coroutine: ``asyncio.run`` on CPython; under Pyodide the
  browser event loop is already running and cannot be re-entered, so `run` suspends the whole
  WebAssembly stack on the coroutine's promise instead (JSPI, ``pyodide.ffi.run_sync``);
* how many examples hypothesis tries (`examples`): WebAssembly and promise round trips make
  each example several times slower, and the whole Pyodide run should stay near a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from agent_core.channel.crypto import CryptoBackend, KeyPair
from agent_core.runtime import IS_PYODIDE, default_crypto_backend

T = TypeVar("T")

PYODIDE_EXAMPLES_DIVISOR = 8
"""Under Pyodide, property tests try this many times fewer examples (at least `MIN_EXAMPLES`)."""

MIN_EXAMPLES = 20


def cpython_only(why: str) -> pytest.MarkDecorator:
    """Skip under Pyodide, saying why the test cannot run there (tests/test_pyodide_suite.py
    accepts only skips whose reason starts with "CPython-only")."""
    return pytest.mark.skipif(IS_PYODIDE, reason=f"CPython-only: {why}")


def backend() -> CryptoBackend:
    """A crypto backend for this runtime (the one agent_core itself would pick)."""
    return default_crypto_backend()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous test code (no pytest-asyncio)."""
    if not IS_PYODIDE:
        return asyncio.run(coro)
    from pyodide.ffi import can_run_sync, run_sync

    if not can_run_sync():
        coro.close()
        raise RuntimeError(
            "run_sync needs JSPI and a promising entry point: run the tests with "
            "tests/pyodide/run.mjs, which calls pytest through callPromising"
        )
    return run_sync(coro)


def examples(n: int) -> int:
    """Hypothesis ``max_examples``: ``n`` on CPython, fewer under Pyodide."""
    return max(MIN_EXAMPLES, n // PYODIDE_EXAMPLES_DIVISOR) if IS_PYODIDE else n


async def keypair_from_private_bytes(be: CryptoBackend, raw: bytes) -> KeyPair:
    """Rebuild a key pair from raw private bytes (test vectors), on either backend."""
    if hasattr(be, "keypair_from_private_bytes"):  # CPython: synchronous
        return be.keypair_from_private_bytes(raw)
    return await be.import_private_key(raw)  # WebCrypto: a non-extractable import
