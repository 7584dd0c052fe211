"""The wasmtime-py engine (CPython). The only module of the plugin host that imports wasmtime.

Time limits use epoch interruption: one daemon thread advances the shared engine's epoch every
`TICK_S` while any call is running (it sleeps otherwise), and each call sets its store's deadline
to the number of ticks its timeout spans. Epoch checks cost far less than fuel metering, and
unlike fuel they bound wall-clock time, which is what a user waiting on a tool cares about.

Calls into the guest go through wasmtime's unchecked call API (`wasmtime_func_call_unchecked`):
the public `Func.__call__` re-reads the function type and boxes every value, ~40 µs a call here,
against ~3 µs unchecked. It is safe because the host checked every export's signature (`() -> i32`
or `() -> ()`) before calling it. Kernel memory is read through a memoryview over the linear
memory, re-taken whenever the memory's size changed (a grown memory may have moved): after every
call into wasm and when a host function starts. (`memory_may_move = False` would make views
stable, but it doubles the cost of creating and dropping a store.)
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import wasmtime

from agent_core.plugins import meter
from agent_core.plugins.engine import (
    EngineError,
    HostFunction,
    InstanceLimits,
    WasiExit,
    WasiSpec,
    WasmTimeout,
    WasmTrap,
)
from agent_core.plugins.kernel import KERNEL_FUNCTIONS
from agent_core.plugins.wasmbin import FuncType

try:  # The fast call path uses wasmtime-py's ctypes bindings; fall back to Func.__call__.
    from wasmtime import _bindings as _b
    from wasmtime import _ffi as _ffi
    from wasmtime import _func as _wfunc
    from wasmtime._extern import wrap_extern as _wrap_extern

    _call_unchecked = _b._wasmtime_func_call_unchecked
    _export_get = _b._wasmtime_instance_export_get
    _mem_data = _b._wasmtime_memory_data
    _mem_size = _b._wasmtime_memory_data_size
    _RAW2 = _ffi.wasmtime_val_raw_t * 2
    _TRAP_PTR = ctypes.POINTER(_ffi.wasm_trap_t)
    _FAST = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the wasmtime version
    _FAST = False

TICK_S = 0.005
_NO_DEADLINE = 1 << 62
_VALTYPES = {
    "i32": wasmtime.ValType.i32(),
    "i64": wasmtime.ValType.i64(),
    "f32": wasmtime.ValType.f32(),
    "f64": wasmtime.ValType.f64(),
}


class _Ticker:
    """Advances the engine's epoch every TICK_S while at least one call is running."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._active = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._lock:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="kite-wasm-epoch", daemon=True
                )
                self._thread.start()
        if not self._wake.is_set():
            self._wake.set()

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _run(self) -> None:
        import time

        sleep = threading.Event().wait
        while True:
            self._wake.wait()
            # Count ticks by the clock, not by wake-ups: on a loaded machine a 5 ms sleep can
            # take far longer, and deadlines are counted in ticks.
            start = time.monotonic()
            ticks = 0
            while True:
                sleep(TICK_S)
                due = int((time.monotonic() - start) / TICK_S)
                while ticks < due:
                    self._engine.increment_epoch()
                    ticks += 1
                with self._lock:
                    if self._active == 0:
                        self._wake.clear()
                        break


def _functype(t: FuncType) -> wasmtime.FuncType:
    try:
        return wasmtime.FuncType(
            [_VALTYPES[p] for p in t.params], [_VALTYPES[r] for r in t.results]
        )
    except KeyError as exc:
        raise EngineError(f"unsupported value type {exc.args[0]} in a host function") from exc


class WasmtimeEngine:
    """Compiles modules once (cached by sha256) for any number of plugin instances."""

    name = "wasmtime"
    _shared: dict[bool, WasmtimeEngine] = {}  # noqa: RUF012 - one per mode, per process
    CACHE_SIZE = 64

    def __init__(self, metered: bool = False) -> None:
        # metered: behave like the browser engine — time limits by instrumentation (meter.py)
        # instead of epochs, WASI from the in-memory shim (wasi.py) instead of wasmtime's — so
        # those code paths are tested on CPython against the same modules.
        self.metered = metered
        config = wasmtime.Config()
        config.epoch_interruption = not metered
        self.engine = wasmtime.Engine(config)
        self.ticker = _Ticker(self.engine)
        self._cache: OrderedDict[bytes, wasmtime.Module] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def shared(cls, metered: bool = False) -> WasmtimeEngine:
        """One engine per process: compiled modules and the epoch thread are shared."""
        if metered not in cls._shared:
            cls._shared[metered] = cls(metered)
        return cls._shared[metered]

    def compile(self, wasm: bytes) -> wasmtime.Module:
        key = hashlib.sha256(wasm).digest()
        with self._cache_lock:
            module = self._cache.get(key)
            if module is not None:
                self._cache.move_to_end(key)
                return module
        try:
            if self.metered:
                wasm = meter.instrument(bytes(wasm))
            module = wasmtime.Module(self.engine, bytes(wasm))
        except wasmtime.WasmtimeError as exc:
            raise EngineError(f"invalid WebAssembly module: {_first_line(exc)}") from None
        except ValueError as exc:  # WasmFormatError from the meter
            raise EngineError(f"cannot load the module: {exc}") from None
        with self._cache_lock:
            self._cache[key] = module
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return module

    def instantiate(
        self,
        kernel: Any,
        guest: Any,
        host_functions: Sequence[HostFunction],
        wasi: WasiSpec | None,
        limits: InstanceLimits,
    ) -> WasmtimeInstance:
        return WasmtimeInstance(self, kernel, guest, host_functions, wasi, limits)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class WasmtimeInstance:
    """A kernel instance and a guest instance in one store."""

    def __init__(
        self,
        owner: WasmtimeEngine,
        kernel: wasmtime.Module,
        guest: wasmtime.Module,
        host_functions: Sequence[HostFunction],
        wasi: WasiSpec | None,
        limits: InstanceLimits,
    ) -> None:
        self._owner = owner
        store = wasmtime.Store(owner.engine)
        store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=limits.table_elements,
            instances=4,
            tables=8,
            memories=8,
        )
        if not owner.metered:
            store.set_epoch_deadline(_NO_DEADLINE)
        self._store = store
        self._meter: meter.Meter | None = None
        self._closed = False
        self._caller: Any = None  # set while a host function runs: kernel calls go through it
        self._view = memoryview(b"")
        try:
            self._kernel = wasmtime.Instance(store, kernel, [])
            self._kfuncs: dict[str, Any] = {}
            self._memory: wasmtime.Memory = self._export(self._kernel, "memory")
            if _FAST:
                self._ctx = store._context()
                self._raw = _RAW2()
                self._kraw = _RAW2()  # kernel calls may happen inside a guest call
                self._trap = _TRAP_PTR()
                self._trap_ref = ctypes.byref(self._trap)
                self._mem_ref = ctypes.byref(self._memory._memory)
            linker = wasmtime.Linker(owner.engine)
            linker.define_instance(store, "extism:host/env", self._kernel)
            for hf in host_functions:
                linker.define_func(
                    hf.module, hf.name, _functype(hf.type), self._trampoline(hf), access_caller=True
                )
            if wasi is not None and (owner.metered or any(not h for h, _ in wasi.preopens)):
                self._define_wasi_shim(linker, guest, wasi)
            elif wasi is not None:
                cfg = wasmtime.WasiConfig()
                for host_dir, guest_dir in wasi.preopens:
                    cfg.preopen_dir(host_dir, guest_dir)
                if wasi.stdout is not None:
                    cfg.stdout_custom = wasi.stdout
                if wasi.stderr is not None:
                    cfg.stderr_custom = wasi.stderr
                store.set_wasi(cfg)
                linker.define_wasi()
        except wasmtime.WasmtimeError as exc:
            raise EngineError(f"cannot link the plugin: {_first_line(exc)}") from None
        self._guest = self._guarded(lambda: linker.instantiate(store, guest), None)
        if owner.metered:
            self._start_meter()
        self._gfuncs: dict[str, Any] = {}
        self._refresh()

    def _define_wasi_shim(self, linker: wasmtime.Linker, guest: Any, wasi: WasiSpec) -> None:
        from agent_core.plugins.wasi import MemFS, WasiShim

        names = {i.name for i in guest.imports if i.module == "wasi_snapshot_preview1"}
        shim = WasiShim(
            wasi.fs if wasi.fs is not None else MemFS(),
            [g for _, g in wasi.preopens],
            wasi.stdout,
            wasi.stderr,
        )
        store = self._store

        class GuestMemory:
            def _mem(self_inner) -> wasmtime.Memory:
                mem = self._guest.exports(store).get("memory")
                if not isinstance(mem, wasmtime.Memory):
                    raise WasmTrap("a WASI call needs the guest to export its memory")
                return mem

            def read(self_inner, offset: int, length: int) -> bytes:
                return bytes(self_inner._mem().read(store, offset, offset + length))

            def write(self_inner, offset: int, data: bytes) -> None:
                self_inner._mem().write(store, data, offset)

        shim.bind(GuestMemory())
        for name, ftype, fn in shim.functions(names):
            hf = HostFunction("wasi_snapshot_preview1", name, ftype, fn)
            linker.define_func(
                hf.module, name, _functype(ftype), self._trampoline(hf), access_caller=True
            )

    def _start_meter(self) -> None:
        store = self._store
        instances = [self._kernel, self._guest]
        exports = [i.exports(store) for i in instances]
        intervals = [e[meter.METER_INTERVAL] for e in exports]

        def set_interval(n: int) -> None:
            for g in intervals:
                g.set_value(store, wasmtime.Val.i32(n))

        self._meter = m = meter.Meter(set_interval)
        check = wasmtime.Func(store, wasmtime.FuncType([], []), m.check)
        for e in exports:
            e[meter.METER_TABLE].set(store, 0, check)
            e[meter.METER_COUNTER].set_value(store, wasmtime.Val.i32(m.interval))

    def _trampoline(self, hf: HostFunction) -> Any:
        func = hf.func

        def call(caller: Any, *args: Any) -> Any:
            outer = self._caller
            self._caller = caller
            self._refresh()  # the guest may have grown the kernel's memory before calling us
            try:
                return func(*args)
            finally:
                self._caller = outer

        return call

    def _export(self, instance: wasmtime.Instance, name: str) -> Any:
        """One export by name (InstanceExports would enumerate them all: ~5 µs each)."""
        if not _FAST:
            return instance.exports(self._store).get(name)
        item = _ffi.wasmtime_extern_t()
        raw = name.encode()
        ctx = self._store._context() if self._caller is None else self._caller._context()
        if not _export_get(
            ctx, ctypes.byref(instance._instance), raw, len(raw), ctypes.byref(item)
        ):
            return None
        return _wrap_extern(item)

    # -- memory ----------------------------------------------------------------------------

    def _refresh(self) -> memoryview:
        if _FAST:
            ctx = self._ctx if self._caller is None else self._caller._context()
            size = _mem_size(ctx, self._mem_ref)
            if size != len(self._view):
                addr = ctypes.cast(_mem_data(ctx, self._mem_ref), ctypes.c_void_p).value
                self._view = memoryview((ctypes.c_ubyte * size).from_address(addr)).cast("B")
        else:
            size = self._memory.data_len(self._store)
            if size != len(self._view):
                self._view = memoryview(self._memory.get_buffer_ptr(self._store)).cast("B")
        return self._view

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        view = self._view
        if end > len(view):
            view = self._refresh()
            if end > len(view):
                raise IndexError("read outside the kernel memory")
        if offset < 0 or length < 0:
            raise IndexError("negative offset or length")
        return bytes(view[offset:end])

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        view = self._view
        if end > len(view):
            view = self._refresh()
            if end > len(view):
                raise IndexError("write outside the kernel memory")
        if offset < 0:
            raise IndexError("negative offset")
        view[offset:end] = data

    def view(self) -> memoryview:
        """The kernel memory as a writable view (valid until the next call or grow)."""
        return self._refresh()

    def kernel_size(self) -> int:
        return len(self._refresh())

    def memory_sizes(self) -> list[int]:
        guest = [
            e for e in self._guest.exports(self._store).values() if isinstance(e, wasmtime.Memory)
        ]
        return [m.data_len(self._store) for m in [self._memory, *guest]]

    # -- calls -----------------------------------------------------------------------------

    def kernel(self, name: str, *args: int) -> int | None:
        self._check_open()
        entry = self._kfuncs.get(name)
        if entry is None:
            params, results = KERNEL_FUNCTIONS[name]
            func = self._export(self._kernel, name)
            entry = self._kfuncs[name] = (func, len(params), results[0] if results else None)
        func, nparams, result = entry
        if len(args) != nparams:
            raise TypeError(f"kernel {name} takes {nparams} arguments")
        if not _FAST:
            result = func(self._caller or self._store, *args)
            self._refresh()
            return result
        raw = self._kraw
        for i, a in enumerate(args):  # every kernel parameter the host passes is an i64
            raw[i].i64 = a - (1 << 64) if a >= 1 << 63 else a
        self._raw_call(func, raw)
        self._refresh()
        if result is None:
            return None
        return raw[0].i64 & 0xFFFF_FFFF_FFFF_FFFF if result == "i64" else raw[0].i32

    def _raw_call(self, func: Any, raw: Any) -> None:
        ctx = self._ctx if self._caller is None else self._caller._context()
        err = _call_unchecked(ctx, ctypes.byref(func._func), raw, 2, self._trap_ref)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        if self._trap:
            trap = wasmtime.Trap._from_ptr(self._trap)
            self._trap = _TRAP_PTR()
            self._trap_ref = ctypes.byref(self._trap)
            raise trap

    def call(self, name: str, timeout_ms: int | None) -> int | None:
        self._check_open()
        func = self._gfuncs.get(name)
        if func is None:
            func = self._export(self._guest, name)
            if not isinstance(func, wasmtime.Func):
                raise EngineError(f"the plugin has no function {name!r}")
            nres = len(func.type(self._store).results)
            self._gfuncs[name] = func = (func, nres)
        return self._guarded(lambda: self._invoke(func), timeout_ms)

    def _invoke(self, entry: tuple[Any, int]) -> int | None:
        func, nres = entry
        if not _FAST:
            return func(self._store)
        raw = self._raw
        raw[0].i64 = 0
        self._raw_call(func, raw)
        return raw[0].i32 if nres else None

    def _guarded(self, fn: Any, timeout_ms: int | None) -> Any:
        """Run `fn` under a deadline and translate wasmtime's errors into the seam's."""
        ticker = self._owner.ticker
        if self._owner.metered:
            if self._meter is not None:
                self._meter.start(timeout_ms)
        elif timeout_ms is None:
            self._store.set_epoch_deadline(_NO_DEADLINE)
        else:
            self._store.set_epoch_deadline(max(1, -(-timeout_ms // int(TICK_S * 1000))) + 1)
        ticker.enter()
        try:
            return fn()
        except meter.MeterTimeout:
            raise WasmTimeout("the plugin ran past its time limit") from None
        except (wasmtime.ExitTrap, WasiExit) as exc:
            raise WasiExit(exc.code) from None
        except wasmtime.Trap as exc:
            self._reraise_wasi_exit()
            if self._meter is not None and self._meter.expired:
                raise WasmTimeout("the plugin ran past its time limit") from None
            if exc.trap_code == wasmtime.TrapCode.INTERRUPT:
                raise WasmTimeout("the plugin ran past its time limit") from None
            raise WasmTrap(_trap_message(exc)) from None
        except wasmtime.WasmtimeError as exc:
            self._reraise_wasi_exit()
            if self._meter is not None and self._meter.expired:
                raise WasmTimeout("the plugin ran past its time limit") from None
            raise WasmTrap(_first_line(exc)) from None
        finally:
            ticker.leave()
            self._refresh()
            if _FAST:
                _wfunc.LAST_EXCEPTION = None  # a host function's exception, already recorded

    def _reraise_wasi_exit(self) -> None:
        """The shim's proc_exit raised WasiExit inside a host function: surface it."""
        if _FAST and isinstance(_wfunc.LAST_EXCEPTION, WasiExit):
            code = _wfunc.LAST_EXCEPTION.code
            raise WasiExit(code)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("the plugin instance is closed")

    def close(self) -> None:
        self._closed = True
        self._view = memoryview(b"")
        self._gfuncs.clear()
        self._kfuncs.clear()


def _trap_message(trap: wasmtime.Trap) -> str:
    code = trap.trap_code
    names = {
        wasmtime.TrapCode.UNREACHABLE: "unreachable instruction executed",
        wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
        wasmtime.TrapCode.STACK_OVERFLOW: "call stack exhausted",
        wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer divide by zero",
        wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
        wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid conversion to integer",
        wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "uninitialized element",
        wasmtime.TrapCode.BAD_SIGNATURE: "indirect call type mismatch",
        wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
    }
    if code in names:
        return names[code]
    return _first_line(trap.message if hasattr(trap, "message") else trap)
