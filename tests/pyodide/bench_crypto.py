"""Noise cost on this runtime's crypto backend: an XX handshake, and 4 KiB transport messages.

    python tests/pyodide/bench_crypto.py                            # CPython, `cryptography`
    node tests/pyodide/run.mjs --python tests/pyodide/bench_crypto.py   # Pyodide, WebCrypto

(or, with no JSPI, ``await measure()`` from ``pyodide.runPythonAsync``). Both sides of the
handshake run here, so one "handshake" is 3 messages written and read, with
one ephemeral key generation and 3 DHs per side (ee, es, se). Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent_core.channel.noise import HandshakeState
from agent_core.runtime import IS_PYODIDE, default_crypto_backend

HANDSHAKES = 30
MESSAGES = 300
SIZE = 4096


async def measure() -> dict[str, float | str]:
    backend = default_crypto_backend()
    statics = [await backend.generate_keypair() for _ in range(2)]

    async def handshake() -> tuple[HandshakeState, HandshakeState]:
        i, r = (
            HandshakeState(
                backend, pattern="XX", initiator=side, prologue=b"kite.v1", static=statics[side]
            )
            for side in (True, False)
        )
        await r.read_message(await i.write_message(b""))
        await i.read_message(await r.write_message(b'{"server": {}}'))
        await r.read_message(await i.write_message(b"{}"))
        return i, r

    await handshake()  # warm-up
    times = []
    for _ in range(HANDSHAKES):
        start = time.perf_counter()
        i, r = await handshake()
        times.append(time.perf_counter() - start)
    ti, tr = i.split(), r.split()
    data = os.urandom(SIZE)
    assert await tr.decrypt(await ti.encrypt(data)) == data  # warm-up (cipher import)
    start = time.perf_counter()
    for _ in range(MESSAGES):
        await tr.decrypt(await ti.encrypt(data))
    per_message = (time.perf_counter() - start) / MESSAGES
    return {
        "runtime": "pyodide" if IS_PYODIDE else "cpython",
        "backend": type(backend).__name__,
        "xx_handshake_ms_median": round(statistics.median(times) * 1e3, 2),
        "xx_handshake_ms_min": round(min(times) * 1e3, 2),
        "transport_4k_encrypt_decrypt_us": round(per_message * 1e6, 1),
    }


if __name__ == "__main__":
    if IS_PYODIDE:  # run.mjs --python: JSPI lets the script block on the coroutine
        from pyodide.ffi import run_sync

        print(json.dumps(run_sync(measure())))
    else:
        print(json.dumps(asyncio.run(measure())))
