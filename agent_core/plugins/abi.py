"""The engine-neutral plugin host: the Extism guest ABI over any `Engine`.

A call: write the input into a fresh kernel heap, call the guest's export `() -> i32` under the
deadline, then read the kernel's root for the output range and the error handle. Host functions
(`config_get`, `var_*`, `http_request`, `log_*`, user functions) run here in Python and reach the
guest's data only through the kernel's memory, with every handle checked against the kernel heap.

Everything a call produces is classified into a `PluginError.kind`, so both engines report the
same outcome for the same plugin. After a trap, a timeout or a WASI exit the instance is thrown
away and rebuilt at the next call: the guest's own state (its stack pointer, a half-updated heap)
cannot be trusted after it was cut off mid-function.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from agent_core.plugins import kernel as K
from agent_core.plugins import wasmbin
from agent_core.plugins.engine import (
    Engine,
    EngineError,
    EngineInstance,
    HostFunction,
    InstanceLimits,
    WasiExit,
    WasiSpec,
    WasmTimeout,
    WasmTrap,
)
from agent_core.plugins.sandbox import (
    HttpClient,
    Limits,
    PluginError,
    host_allowed,
    memory_plan,
)
from agent_core.plugins.scratch import DiskMirror
from agent_core.plugins.wasi import MemFS
from agent_core.plugins.wasmbin import PAGE, FuncType

ENV = "extism:host/env"
USER = "extism:host/user"
WASI = "wasi_snapshot_preview1"
MASK64 = (1 << 64) - 1

# Functions of `extism:host/env` that the host (not the kernel) provides.
HOST_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "config_get": (("i64",), ("i64",)),
    "var_get": (("i64",), ("i64",)),
    "var_set": (("i64", "i64"), ()),
    "http_request": (("i64", "i64"), ("i64",)),
    "http_status_code": ((), ("i32",)),
    "http_headers": ((), ("i64",)),
    "log_trace": (("i64",), ()),
    "log_debug": (("i64",), ()),
    "log_info": (("i64",), ()),
    "log_warn": (("i64",), ()),
    "log_error": (("i64",), ()),
    "get_log_level": ((), ("i32",)),
}
LOG_LEVELS = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4}


@dataclass(frozen=True)
class UserFunction:
    """A host function a plugin imports from `extism:host/user` (or `namespace`).

    `func(ctx, *args)` gets a `HostContext` and the wasm arguments (ints for i32/i64, i64
    handles as unsigned), and returns the result (or None).
    """

    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]
    func: Callable[..., Any]
    namespace: str = USER


class HostContext:
    """What a user host function may do with the calling plugin's kernel memory."""

    def __init__(self, instance: PluginInstance) -> None:
        self._instance = instance

    def read(self, handle: int) -> bytes:
        """The bytes of a kernel block (raises `PluginError` for a bad handle)."""
        return self._instance._read_block(handle)

    def read_str(self, handle: int) -> str:
        return self.read(handle).decode("utf-8", "replace")

    def alloc(self, data: bytes | str) -> int:
        """Copy `data` into a new kernel block and return its handle (0 for empty data)."""
        if isinstance(data, str):
            data = data.encode()
        return self._instance._alloc_bytes(data)

    @property
    def vars(self) -> dict[str, bytes]:
        return self._instance.vars


@dataclass
class CallLog:
    """Log lines of the last call: (level, text); `truncated` once the cap was reached."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0
    truncated: bool = False


@lru_cache(maxsize=16)
def _kernel_for(pages: int, table_elements: int) -> bytes:
    return wasmbin.cap_limits(K.kernel_wasm(), [pages], table_elements)


class PreparedModule:
    """A guest module checked, constrained to its memory budget and compiled, ready to
    instantiate any number of times (what a plugin keeps between instances)."""

    def __init__(
        self,
        engine: Engine,
        wasm: bytes,
        limits: Limits,
        user_functions: Sequence[UserFunction] = (),
    ) -> None:
        try:
            self.info = wasmbin.parse(wasm)
        except wasmbin.WasmFormatError as exc:
            raise PluginError(f"not a loadable WebAssembly module: {exc}", "load") from None
        self.engine = engine
        self.limits = limits
        self.user_functions = {(f.namespace, f.name): f for f in user_functions}
        self.uses_wasi = self._check_imports()
        self.kernel_pages, self.guest_pages = memory_plan(
            limits.memory_bytes, len(self.info.memories)
        )
        try:
            guest = wasmbin.cap_limits(wasm, self.guest_pages, limits.table_elements)
        except wasmbin.WasmFormatError as exc:
            raise PluginError(str(exc), "memory" if "memory" in str(exc) else "load") from None
        try:
            self.kernel_module = engine.compile(_kernel_for(self.kernel_pages, 16))
            self.guest_module = engine.compile(guest)
        except EngineError as exc:
            raise PluginError(str(exc), "load") from None

    def _check_imports(self) -> bool:
        uses_wasi = False
        for imp in self.info.imports:
            where = f"{imp.module}.{imp.name}"
            if imp.module == WASI:
                if imp.kind != "func":
                    raise PluginError(f"the plugin imports a WASI {imp.kind} ({where})", "load")
                uses_wasi = True
                continue
            if imp.kind != "func":
                raise PluginError(
                    f"the plugin imports a {imp.kind} ({where}); only functions can be imported",
                    "load",
                )
            if imp.module == ENV:
                sig = K.KERNEL_FUNCTIONS.get(imp.name) or HOST_FUNCTIONS.get(imp.name)
                if sig is None:
                    raise PluginError(
                        f"the plugin imports {where}, which this host does not provide "
                        "(built with a newer PDK?)",
                        "load",
                    )
                want = FuncType(*sig)
            elif (imp.module, imp.name) in self.user_functions:
                f = self.user_functions[(imp.module, imp.name)]
                want = FuncType(f.params, f.results)
            else:
                raise PluginError(
                    f"the plugin imports {where}, which the host does not provide", "load"
                )
            if imp.type != want:
                raise PluginError(
                    f"the plugin imports {where} as {imp.type}, but it is {want}", "load"
                )
        return uses_wasi

    def export_signature_ok(self, name: str) -> bool:
        t = self.info.export_type(name)
        return t is not None and not t.params and t.results in ((), ("i32",))


class PluginInstance:
    """One live instance of a plugin: call exports with bytes in, bytes out."""

    def __init__(
        self,
        module: PreparedModule,
        *,
        name: str = "plugin",
        config: Mapping[str, str] | None = None,
        allowed_hosts: list[str] | None = None,
        preopens: Sequence[tuple[str, str]] = (),
        http: HttpClient | None = None,
        vars: dict[str, bytes] | None = None,
        log_level: str = "info",
        on_log: Callable[[str, str], None] | None = None,
    ) -> None:
        self.module = module
        self.name = name
        self.limits = module.limits
        self.config = dict(config or {})
        self.allowed_hosts = list(allowed_hosts or [])
        self.preopens = list(preopens)
        self.http = http
        self.vars: dict[str, bytes] = vars if vars is not None else {}
        self.log_level = LOG_LEVELS[log_level]
        self.on_log = on_log
        self.log = CallLog()
        # The plugin's files, capped at `scratch_bytes` in every engine (see scratch.py); a scratch
        # directory on disk is loaded into it and written back after each call.
        self.fs = MemFS(module.limits.scratch_bytes)
        self._mirror: DiskMirror | None = None
        if module.uses_wasi and any(h for h, _ in self.preopens):
            self._mirror = DiskMirror(self.fs, self.preopens)
            self._mirror.load()
        self._inst: EngineInstance | None = None
        self._host_error: PluginError | None = None
        self._http_status = 0
        self._deadline = 0.0
        self._busy = False
        self._instantiate()

    # -- lifecycle ---------------------------------------------------------------------------

    def _instantiate(self) -> None:
        m = self.module
        imported = {(i.module, i.name) for i in m.info.imports if i.kind == "func"}
        funcs: list[HostFunction] = []
        for fname, sig in HOST_FUNCTIONS.items():
            if (ENV, fname) in imported:
                impl = getattr(self, f"_h_{fname}")
                funcs.append(HostFunction(ENV, fname, FuncType(*sig), self._guard(impl)))
        ctx = HostContext(self)
        for key, uf in m.user_functions.items():
            if key in imported:
                funcs.append(
                    HostFunction(
                        uf.namespace,
                        uf.name,
                        FuncType(uf.params, uf.results),
                        self._guard(self._user(uf, ctx)),
                    )
                )
        wasi = None
        if m.uses_wasi:
            wasi = WasiSpec(
                stdout=lambda b: self._log("info", b),
                stderr=lambda b: self._log("warn", b),
                preopens=[("", guest) for _, guest in self.preopens],  # served from self.fs
                fs=self.fs,
            )
        limits = InstanceLimits(m.limits.memory_bytes, m.limits.table_elements)
        self.log = CallLog()
        self._host_error = None
        try:
            inst = m.engine.instantiate(m.kernel_module, m.guest_module, funcs, wasi, limits)
        except EngineError as exc:
            raise PluginError(str(exc), "load") from None
        except WasmTimeout:
            raise PluginError(f"{self.name}: start-up ran past the time limit", "timeout") from None
        except (WasmTrap, WasiExit) as exc:
            raise PluginError(f"{self.name}: start-up failed: {exc}", "trap") from None
        self._inst = inst
        # Guest runtimes that need initialising (C/Zig constructors, WASI reactors), as Extism.
        for init in ("__wasm_call_ctors", "_initialize"):
            t = m.info.export_type(init)
            if t is not None and t == FuncType((), ()):
                self._run(init, init_phase=True)
                break

    def close(self) -> None:
        if self._inst is not None:
            self._inst.close()
            self._inst = None

    # -- calls -------------------------------------------------------------------------------

    def function_exists(self, name: str) -> bool:
        return self.module.export_signature_ok(name)

    def call(self, function: str, data: bytes | str = b"") -> bytes:
        """Call `function` with `data` as input; return its output or raise `PluginError`."""
        if isinstance(data, str):
            data = data.encode()
        if self._busy:
            raise PluginError(f"{self.name}: re-entrant call to {function}", "invalid")
        m = self.module
        if m.info.export_type(function) is None:
            raise PluginError(f"{self.name} has no function {function!r}", "missing")
        if not m.export_signature_ok(function):
            raise PluginError(
                f"{self.name}.{function} is not a plugin function (it must take no parameters "
                "and return an i32 or nothing)",
                "invalid",
            )
        if len(data) > self.limits.max_input_bytes:
            raise PluginError(
                f"input of {len(data)} bytes exceeds the limit of {self.limits.max_input_bytes}",
                "too_big",
            )
        if self._inst is None:
            self._instantiate()
        self._busy = True
        try:
            self.log = CallLog()
            self._host_error = None
            self._http_status = 0
            exchange = getattr(self._inst, "exchange", None)
            if exchange is not None:  # engines where each crossing is costly (Pyodide)
                rc, root = self._run_exchange(exchange, function, data)
                return self._finish(function, rc, root)
            self._begin(data)
            rc = self._run(function)
            return self._finish(function, rc)
        finally:
            self._busy = False
            if self._mirror is not None:
                self._save_scratch()
            if function == "_start":
                self.close()  # a WASI command's state is spent after `_start`, as in Extism

    def _save_scratch(self) -> None:
        """Write the call's file changes to the scratch directory; a failure to do so fails a
        call that otherwise succeeded (its files would silently be lost)."""
        assert self._mirror is not None
        try:
            self._mirror.sync()
        except OSError as exc:
            if sys.exc_info()[1] is None:
                raise PluginError(
                    f"{self.name}: cannot save the plugin's scratch files: {exc.strerror or exc}",
                    "error",
                ) from None

    def _run_exchange(
        self, exchange: Callable[..., tuple[int, bytes]], function: str, data: bytes
    ) -> tuple[int | None, tuple[int, ...] | None]:
        """`_begin` + `_run` in one engine call, when the engine offers `exchange`."""
        n = len(data)
        cap = K.block_capacity(n)
        if n:
            block = K.ROOT.pack(K.FIRST_HANDLE + cap, K.FIRST_HANDLE, n, 0, 0, 0, 0)
            block += K.HEADER.pack(cap, n) + data
        else:
            block = K.ROOT.pack(K.HEAP, 0, 0, 0, 0, 0, 0)
        holder: list[tuple[int, bytes]] = []

        def call(name: str, timeout: int | None) -> int:
            holder.append(exchange(name, K.ROOT_OFFSET, block, timeout))
            return holder[0][0]

        try:
            rc = self._run(function, runner=call)
        except IndexError:  # the input does not fit the kernel's memory yet: grow, slow path
            self._begin(data)
            return self._run(function), None
        return rc, K.ROOT.unpack(holder[0][1])

    def _run(
        self,
        function: str,
        init_phase: bool = False,
        runner: Callable[[str, int | None], int | None] | None = None,
    ) -> int | None:
        inst = self._inst
        assert inst is not None
        timeout = self.limits.timeout_ms
        self._deadline = time.monotonic() + timeout / 1000
        try:
            return (runner or inst.call)(function, timeout)
        except WasmTimeout:
            self.close()
            raise PluginError(
                f"{self.name}.{function} ran past its time limit of {timeout} ms and was stopped",
                "timeout",
            ) from None
        except WasiExit as exc:
            error = None if init_phase else self._error_message()
            self.close()
            if exc.code == 0 and error is None and not init_phase:
                return 0
            raise PluginError(
                f"{self.name}.{function} exited with status {exc.code}"
                + (f": {error}" if error else ""),
                "exit",
            ) from None
        except WasmTrap as exc:
            host_error = self._host_error
            error = None if init_phase else self._error_message()
            at_cap = self._memory_at_cap()
            self.close()
            if host_error is not None:
                raise host_error from None
            if at_cap:
                mib = self.limits.memory_bytes / (1024 * 1024)
                raise PluginError(
                    f"{self.name}.{function} reached its memory limit ({mib:g} MiB over all its "
                    f"memories) and failed: {exc}",
                    "memory",
                ) from None
            if error:
                msg = f"{self.name}.{function} failed: {error} ({exc})"
                raise PluginError(msg, "error") from None
            raise PluginError(f"{self.name}.{function} trapped: {exc}", "trap") from None

    def _begin(self, data: bytes) -> None:
        """Reset the kernel and place the input, writing the root directly (one memory write
        instead of three kernel calls); fall back to the kernel's allocator to grow."""
        inst = self._inst
        assert inst is not None
        n = len(data)
        if n == 0:
            inst.write(K.ROOT_OFFSET, K.ROOT.pack(K.HEAP, 0, 0, 0, 0, 0, 0))
            return
        cap = K.block_capacity(n)
        try:
            inst.write(
                K.ROOT_OFFSET,
                K.ROOT.pack(K.FIRST_HANDLE + cap, K.FIRST_HANDLE, n, 0, 0, 0, 0)
                + K.HEADER.pack(cap, n)
                + data,
            )
        except IndexError:
            inst.kernel("reset")
            handle = (inst.kernel("alloc", n) or 0) & MASK64
            if handle == 0:
                raise PluginError(
                    f"input of {n} bytes does not fit in the plugin's memory", "memory"
                ) from None
            inst.kernel("input_set", handle, n)
            inst.write(handle, data)

    def _finish(self, function: str, rc: int | None, root: tuple[int, ...] | None = None) -> bytes:
        inst = self._inst
        assert inst is not None
        if root is None:
            root = K.ROOT.unpack(inst.read(K.ROOT_OFFSET, K.ROOT.size))  # one read for all
        _end, _ioff, _ilen, out_off, out_len, err, _free = root
        if err:
            error = self._error_message(root)
            if error is not None:
                raise PluginError(f"{self.name}.{function}: {error}", "error")
        if rc:
            raise PluginError(f"{self.name}.{function} returned error code {rc}", "error")
        if out_len > self.limits.max_output_bytes:
            raise PluginError(
                f"{self.name}.{function} produced {out_len} bytes of output, over the limit of "
                f"{self.limits.max_output_bytes}",
                "too_big",
            )
        if out_len == 0:
            return b""
        try:
            return inst.read(out_off, out_len)
        except IndexError:
            msg = f"{self.name}.{function} set an invalid output range"
            raise PluginError(msg, "trap") from None

    def _error_message(self, root: tuple[int, ...] | None = None) -> str | None:
        """The guest's error message, if it set one (Extism: a non-empty block)."""
        inst = self._inst
        if inst is None:
            return None
        try:
            if root is None:
                root = K.ROOT.unpack(inst.read(K.ROOT_OFFSET, K.ROOT.size))
            end, *_rest, err, _free = root
            if err == 0:
                return None
            length = self._block_length(err, end)
            if not length:
                return None
            raw = inst.read(err, min(length, self.limits.max_error_bytes))
        except (IndexError, EngineError):
            return None
        text = raw.decode("utf-8", "replace")
        if length > self.limits.max_error_bytes:
            text += f"... [{length - self.limits.max_error_bytes} more bytes]"
        return text

    def _memory_at_cap(self) -> bool:
        inst = self._inst
        if inst is None:
            return False
        try:
            sizes = inst.memory_sizes()
        except Exception:  # diagnostics only
            return False
        # A failed memory.grow is invisible to the host (the guest just gets -1), so a trap with
        # a memory grown to 3/4 of its budget or more is reported as hitting the memory limit.
        budgets = [self.module.kernel_pages, *self.module.guest_pages]
        return any(4 * s >= 3 * b * PAGE for s, b in zip(sizes, budgets, strict=False))

    # -- kernel memory helpers ---------------------------------------------------------------

    def _block_length(self, handle: int, heap_end: int | None = None) -> int:
        """The `used` length of the block at `handle`, or 0 if it is not an active block."""
        inst = self._inst
        assert inst is not None
        if heap_end is None:
            heap_end = K.ROOT.unpack(inst.read(K.ROOT_OFFSET, K.ROOT.size))[0]
        if handle < K.FIRST_HANDLE or handle >= heap_end or handle % 8:
            return 0
        cap, used = K.HEADER.unpack(inst.read(handle - K.HEADER_SIZE, K.HEADER_SIZE))
        if used == K.FREE or used > cap or handle + used > heap_end:
            return 0
        return used

    def _read_block(self, handle: int) -> bytes:
        handle &= MASK64
        if handle == 0:
            return b""
        inst = self._inst
        assert inst is not None
        n = self._block_length(handle)
        if n == 0 and not self._is_empty_block(handle):
            raise PluginError(f"{self.name} passed an invalid memory handle ({handle})", "trap")
        return inst.read(handle, n)

    def _take_block(self, handle: int) -> bytes:
        """Read a block the guest hands over and free it: since Extism 1.x, host functions
        own the handles passed to them (a PDK that frees them too is harmless: free checks)."""
        data = self._read_block(handle)
        if handle & MASK64:
            inst = self._inst
            assert inst is not None
            inst.kernel("free", handle & MASK64)
        return data

    def _is_empty_block(self, handle: int) -> bool:
        inst = self._inst
        assert inst is not None
        heap_end = K.ROOT.unpack(inst.read(K.ROOT_OFFSET, K.ROOT.size))[0]
        if handle < K.FIRST_HANDLE or handle > heap_end or handle % 8:
            return False
        _cap, used = K.HEADER.unpack(inst.read(handle - K.HEADER_SIZE, K.HEADER_SIZE))
        return used == 0

    def _alloc_bytes(self, data: bytes) -> int:
        if not data:
            return 0
        inst = self._inst
        assert inst is not None
        handle = (inst.kernel("alloc", len(data)) or 0) & MASK64
        if handle == 0:
            raise PluginError(
                f"{self.name} is out of memory (kernel allocation of {len(data)} bytes failed)",
                "memory",
            )
        inst.write(handle, data)
        return handle

    def _log(self, level: str, data: bytes) -> None:
        if LOG_LEVELS.get(level, 2) < self.log_level:
            return
        log = self.log
        room = self.limits.max_log_bytes - log.size
        if room <= 0:
            log.truncated = True
            return
        if len(data) > room:
            data = data[:room]
            log.truncated = True
        log.size += len(data)
        text = data.decode("utf-8", "replace")
        log.lines.append((level, text))
        if self.on_log is not None:
            self.on_log(level, text)

    # -- host functions (extism:host/env) ----------------------------------------------------

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Record a host function's failure so the trap it causes is reported as that error."""

        def guarded(*args: Any) -> Any:
            try:
                return fn(*args)
            except PluginError as exc:
                self._host_error = exc
                raise
            except Exception as exc:
                self._host_error = PluginError(
                    f"{self.name}: host function failed: {type(exc).__name__}: {exc}", "error"
                )
                raise

        return guarded

    def _user(self, uf: UserFunction, ctx: HostContext) -> Callable[..., Any]:
        i64 = [p == "i64" for p in uf.params]

        def call(*args: Any) -> Any:
            args = tuple(a & MASK64 if w else a for a, w in zip(args, i64, strict=True))
            result = uf.func(ctx, *args)
            if uf.results == ("i64",) and isinstance(result, int) and result > (1 << 63) - 1:
                result -= 1 << 64
            return result

        return call

    def _key(self, handle: int) -> str:
        return self._take_block(handle).decode("utf-8", "replace")

    def _h_config_get(self, key: int) -> int:
        value = self.config.get(self._key(key))
        return 0 if value is None else self._alloc_bytes(value.encode())

    def _h_var_get(self, key: int) -> int:
        value = self.vars.get(self._key(key))
        return 0 if value is None else self._alloc_bytes(value)

    def _h_var_set(self, key: int, value: int) -> None:
        cap = self.limits.max_var_bytes
        if cap == 0:
            raise PluginError(f"{self.name}: vars are disabled on this host", "forbidden")
        name = self._key(key)
        if value & MASK64 == 0:
            self.vars.pop(name, None)
            return
        data = self._take_block(value)
        size = sum(len(k) + len(v) for k, v in self.vars.items() if k != name)
        if size + len(name) + len(data) > cap:
            raise PluginError(f"{self.name}: the variable store is full ({cap} bytes)", "too_big")
        self.vars[name] = data

    def _h_http_request(self, req: int, body: int) -> int:
        raw = self._take_block(req)
        try:
            spec = json.loads(raw)
            url = spec["url"]
            method = spec.get("method") or "GET"
            headers = spec.get("headers") or {}
            if not isinstance(url, str) or not isinstance(headers, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PluginError(f"{self.name}: malformed http_request", "invalid") from None
        if not host_allowed(url, self.allowed_hosts):
            raise PluginError(
                f"{self.name}: HTTP request to {url} is not allowed (the host is not in the "
                "plugin's allowed_hosts)",
                "forbidden",
            )
        if self.http is None:
            raise PluginError(f"{self.name}: HTTP is not available on this host", "forbidden")
        payload = self._take_block(body) if body & MASK64 else None
        remaining = self._deadline - time.monotonic()
        resp = self.http.request(
            str(method).upper(),
            url,
            {str(k): str(v) for k, v in headers.items()},
            payload,
            remaining,
            self.limits.max_http_response_bytes,
            self.allowed_hosts,
        )
        self._http_status = resp.status
        return self._alloc_bytes(resp.body)

    def _h_http_status_code(self) -> int:
        return self._http_status

    def _h_http_headers(self) -> int:
        return 0

    def _h_log_trace(self, h: int) -> None:
        self._log("trace", self._take_block(h))

    def _h_log_debug(self, h: int) -> None:
        self._log("debug", self._take_block(h))

    def _h_log_info(self, h: int) -> None:
        self._log("info", self._take_block(h))

    def _h_log_warn(self, h: int) -> None:
        self._log("warn", self._take_block(h))

    def _h_log_error(self, h: int) -> None:
        self._log("error", self._take_block(h))

    def _h_get_log_level(self) -> int:
        return self.log_level
