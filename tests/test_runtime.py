"""agent_core imports only the standard library, except in its declared platform modules; and
`agent_core.runtime` picks the right implementation for the runtime it is on.

Runtime-neutral: inside Pyodide (tests/pyodide) `test_neutral_modules_import_here` imports every
module there too, which is what "runs unchanged on CPython and Pyodide" first of all needs.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import agent_core
from agent_core import runtime
from tests.runtime_support import cpython_only, run

PACKAGE_DIR = Path(agent_core.__file__).resolve().parent

PLATFORM_MODULES = {
    "agent_core.channel.crypto_cpython": "cpython",  # cryptography
    "agent_core.transport.ws_cpython": "cpython",  # websockets
    "agent_core.channel.crypto_webcrypto": "pyodide",  # js (WebCrypto)
    "agent_core.transport.ws_browser": "pyodide",  # js (WebSocket)
    "agent_core.plugins.engine_wasmtime": "cpython",  # wasmtime: the plugin host's engines
    "agent_core.plugins.engine_js": "pyodide",  # js (WebAssembly)
    "agent_core.rpc.json_orjson": "cpython",  # orjson: envelope JSON, optional speed-up
}
"""The only agent_core modules allowed to import more than the standard library, and where they
run. A new platform implementation goes here; anything else must stay standard-library only."""

REQUIRED_PLATFORM_MODULES = [
    name for name in PLATFORM_MODULES if ".plugins." not in name and "json_" not in name
]
"""The crypto and transport seams, one implementation per runtime (the plugin engine's extra,
``wasmtime``, and the envelope JSON speed-up, ``orjson``, are optional)."""


def all_modules() -> list[str]:
    """Every module of the agent_core package, found from the files (nothing is imported)."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ["agent_core", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def neutral_modules() -> list[str]:
    return [name for name in all_modules() if name not in PLATFORM_MODULES]


# The check runs in a fresh interpreter: -I -S, so no site hooks (.pth files, sitecustomize)
# load anything, and nothing this pytest process imported is in sys.modules.
_PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
allowed = set(sys.stdlib_module_names) | {"agent_core", "__main__"}
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} - allowed)))
"""


@cpython_only("runs a fresh interpreter in a subprocess")
def test_neutral_modules_load_only_the_standard_library() -> None:
    modules = neutral_modules()
    assert "agent_core.runtime" in modules and "agent_core.client" in modules
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PROBE, str(PACKAGE_DIR.parent), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    foreign = json.loads(probe.stdout)
    assert foreign == [], (
        f"importing agent_core loaded non-stdlib modules {foreign}: import them inside functions, "
        "or, for a platform implementation, add the module to PLATFORM_MODULES"
    )


def test_platform_modules_exist() -> None:
    modules = set(all_modules())
    missing = [name for name in REQUIRED_PLATFORM_MODULES if name not in modules]
    assert not missing


def test_neutral_modules_import_here() -> None:
    """Every runtime-neutral module imports on this runtime, and so do this runtime's own."""
    here = "pyodide" if runtime.IS_PYODIDE else "cpython"
    own = [name for name in REQUIRED_PLATFORM_MODULES if PLATFORM_MODULES[name] == here]
    failures = {}
    for name in [*neutral_modules(), *own]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # report all of them, not just the first
            failures[name] = f"{type(exc).__name__}: {exc}"
    assert not failures


def test_runtime_is_detected() -> None:
    assert (sys.platform == "emscripten") == runtime.IS_PYODIDE
    backend = runtime.default_crypto_backend()
    expected = "WebCryptoBackend" if runtime.IS_PYODIDE else "CpythonCryptoBackend"
    assert type(backend).__name__ == expected
    kp = run(backend.generate_keypair())
    assert len(kp.public) == 32


@cpython_only("the websockets client")
def test_open_transport_on_cpython_uses_websockets() -> None:
    """`open_transport` opens a websockets client offering the subprotocol; bytes round-trip."""
    from websockets.asyncio.server import serve

    from agent_core.transport.base import TransportClosed
    from agent_core.transport.ws_cpython import WebSocketTransport

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, subprotocols=["kite.test"]) as server:
            port = server.sockets[0].getsockname()[1]
            transport = await runtime.open_transport(f"ws://127.0.0.1:{port}/", "kite.test")
            assert isinstance(transport, WebSocketTransport)
            assert transport.ws.subprotocol == "kite.test"
            await transport.send(b"\x00\x01 bytes")
            assert await transport.recv() == b"\x00\x01 bytes"
            await transport.close()
            with pytest.raises(TransportClosed):
                await transport.recv()

    asyncio.run(main())
