"""The engine seam: what the plugin host needs from a WebAssembly engine, and nothing more.

Two implementations: `engine_wasmtime.py` (wasmtime-py, CPython) and `engine_js.py` (the
JavaScript `WebAssembly` API under Pyodide). Everything above this seam — the Extism ABI, the
sandbox policy, manifests, signatures, output handling — is shared Python, so a plugin behaves the
same on both. An engine only compiles modules, links a guest to the kernel and to host functions,
calls exports with a deadline, and reads/writes the kernel's memory.

Errors cross the seam as the exceptions below; the host turns them into `PluginError`s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_core.plugins.wasmbin import FuncType


class EngineError(Exception):
    """The engine refused a module or failed to link it (message is for the user)."""


class WasmTrap(Exception):
    """Guest code trapped (unreachable, out-of-bounds access, stack overflow, ...)."""


class WasmTimeout(WasmTrap):
    """The call ran past its deadline and was interrupted."""


class WasiExit(Exception):
    """The guest called WASI `proc_exit(code)`."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the plugin exited with status {code}")
        self.code = code


@dataclass(frozen=True)
class HostFunction:
    """A Python function a guest imports as `module.name` with the given wasm signature.

    Arguments arrive as Python ints/floats (i64 as a signed int); the result is returned the same
    way, or None for no result. An exception raised here aborts the guest call.
    """

    module: str
    name: str
    type: FuncType
    func: Callable[..., Any]


@dataclass(frozen=True)
class WasiSpec:
    """WASI preview 1 for a guest: preopened directories (host dir -> guest path), no env, no
    args. `stdout`/`stderr` receive what the guest writes to fds 1 and 2 (bytes).

    An engine without WASI of its own (the browser) serves the guest paths from `fs`, the
    plugin's in-memory file system (`wasi.MemFS`); so does any engine when a host dir is "".
    """

    preopens: Sequence[tuple[str, str]] = ()
    stdout: Callable[[bytes], None] | None = None
    stderr: Callable[[bytes], None] | None = None
    fs: Any = None


@dataclass(frozen=True)
class InstanceLimits:
    """Per-instance limits an engine enforces on top of those written into the modules."""

    memory_bytes: int  # per memory, a second line of defence (the module maxima come first)
    table_elements: int
    extra: dict[str, Any] = field(default_factory=dict)


class CompiledModule(Protocol):
    """An engine's compiled form of one module (opaque to the host)."""


class EngineInstance(Protocol):
    """A guest linked to a fresh kernel instance."""

    def call(self, name: str, timeout_ms: int | None) -> int | None:
        """Call export `name` (no params, i32 or no result) and return its result.

        Raises `WasmTimeout` past the deadline, `WasmTrap` on any other trap (including an
        exception from a host function), `WasiExit` on `proc_exit`.
        """

    def kernel(self, name: str, *args: int) -> int | None:
        """Call a kernel export (alloc, length, reset, ...)."""

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the kernel's memory; raises `IndexError` outside it."""

    def write(self, offset: int, data: bytes) -> None:
        """Write into the kernel's memory; raises `IndexError` outside it."""

    def kernel_size(self) -> int:
        """Current size of the kernel's memory in bytes."""

    def memory_sizes(self) -> list[int]:
        """Current size in bytes of every memory of the plugin (kernel first)."""

    def close(self) -> None:
        """Release the instance; later calls raise."""


class Engine(Protocol):
    """Compiles and instantiates modules. One engine object serves many plugins."""

    name: str

    def compile(self, wasm: bytes) -> CompiledModule:
        """Compile (and validate) a module; raises `EngineError`."""

    def instantiate(
        self,
        kernel: CompiledModule,
        guest: CompiledModule,
        host_functions: Sequence[HostFunction],
        wasi: WasiSpec | None,
        limits: InstanceLimits,
    ) -> EngineInstance:
        """Instantiate the kernel, then the guest with `extism:host/env` resolved to the kernel's
        exports plus the host functions, `extism:host/user` (and any other module) to the host
        functions, and `wasi_snapshot_preview1` per `wasi`. Raises `EngineError`; a trap in the
        guest's start function raises `WasmTrap`."""


def default_engine() -> Engine:
    """The engine for this runtime: JavaScript's `WebAssembly` under Pyodide, else wasmtime."""
    import sys

    if sys.platform == "emscripten":
        from agent_core.plugins.engine_js import JsEngine

        return JsEngine()
    from agent_core.plugins.engine_wasmtime import WasmtimeEngine

    return WasmtimeEngine.shared()
