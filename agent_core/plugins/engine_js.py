"""The JavaScript `WebAssembly` engine (Pyodide: in the browser's worker, or under Node).

Same seam as `engine_wasmtime.py`; what differs is how the sandbox is enforced where the
JavaScript API offers no hook:

- memory: the module maxima the host writes into every module (wasmbin.cap_limits) are all a
  `WebAssembly.Memory` needs — `memory.grow` fails at the cap exactly as on wasmtime;
- time: modules are instrumented (meter.py) to call a check every few milliseconds of work; the
  check raises past the deadline, which unwinds the wasm stack;
- files: the in-memory WASI shim (wasi.py) serves the plugin's `allowed_paths` from its MemFS;
- i64 values cross as JavaScript BigInts (`js.BigInt`), so arguments are converted both ways.

Only this module imports `js`/`pyodide`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from js import BigInt, Object, Uint8Array, WebAssembly  # type: ignore[import-not-found]
from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]

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
from agent_core.plugins.wasmbin import MAGIC, parse

MASK64 = (1 << 64) - 1
WASI = "wasi_snapshot_preview1"

# V8's trap messages, normalised to the wording engine_wasmtime uses.
_TRAPS = [
    ("unreachable", "unreachable instruction executed"),
    ("memory access out of bounds", "out-of-bounds memory access"),
    ("maximum call stack size exceeded", "call stack exhausted"),
    ("divide by zero", "integer divide by zero"),
    ("remainder by zero", "integer divide by zero"),
    ("divide result unrepresentable", "integer overflow"),
    ("float unrepresentable", "invalid conversion to integer"),
    ("table index is out of bounds", "out-of-bounds table access"),
    ("null function", "uninitialized element"),
    ("signature mismatch", "indirect call type mismatch"),
]


def _trap_message(exc: BaseException) -> str:
    text = str(exc)
    low = text.lower()
    for needle, message in _TRAPS:
        if needle in low:
            return message
    return text.splitlines()[0] if text else type(exc).__name__


def _trampoline_module() -> bytes:
    """A module that imports `k.check: () -> ()` and re-exports it as a wasm function (a JS
    function cannot be stored in a funcref table; a wasm function wrapping it can)."""

    def vec(items: list[bytes]) -> bytes:
        return bytes([len(items)]) + b"".join(items)

    def name(s: str) -> bytes:
        return bytes([len(s)]) + s.encode()

    def section(sid: int, payload: bytes) -> bytes:
        return bytes([sid, len(payload)]) + payload

    return (
        MAGIC
        + section(1, vec([b"\x60\x00\x00"]))
        + section(2, vec([name("k") + name("check") + b"\x00\x00"]))
        + section(7, vec([name("check") + b"\x00\x00"]))
    )


# One call for the whole exchange: place the input block, call the export, copy the root back.
# Every Python -> JS crossing costs microseconds under Pyodide; this saves a dozen per call.
_EXCHANGE_JS = """
(memory, fn, offset, data) => {
  if (offset + data.length > memory.buffer.byteLength) return undefined;
  new Uint8Array(memory.buffer, offset, data.length).set(data);
  const rc = fn();
  const out = new Uint8Array(60);
  new DataView(out.buffer).setInt32(0, rc === undefined ? 0 : rc, true);
  out.set(new Uint8Array(memory.buffer, 8, 56), 4);
  return out;
}
"""


def _obj(d: dict[str, Any]) -> Any:
    return to_js(d, dict_converter=Object.fromEntries)


class _Compiled:
    """A compiled `WebAssembly.Module` and the imports the host needs to know about."""

    __slots__ = ("imports", "module")

    def __init__(self, module: Any, imports: list[Any]) -> None:
        self.module = module
        self.imports = imports


class JsEngine:
    """Compiles with `WebAssembly.Module` (synchronous: plugins run in a worker, never on a
    page's main thread, where synchronous compilation of large modules is refused)."""

    name = "js"
    CACHE_SIZE = 64

    def __init__(self) -> None:
        from pyodide.code import run_js  # type: ignore[import-not-found]

        self._cache: dict[bytes, Any] = {}
        self._trampoline = WebAssembly.Module.new(to_js(_trampoline_module()))
        try:
            self._exchange: Any = run_js(_EXCHANGE_JS)
        except Exception:  # EvalError: a Content-Security-Policy without 'unsafe-eval' (the app's)
            self._exchange = None  # JsInstance.exchange crosses a few more times instead

    def compile(self, wasm: bytes) -> _Compiled:
        key = hashlib.sha256(wasm).digest()
        module = self._cache.get(key)
        if module is not None:
            return module
        try:
            info = parse(wasm)
            metered = meter.instrument(bytes(wasm))
            module = WebAssembly.Module.new(to_js(metered))
        except ValueError as exc:
            raise EngineError(f"cannot load the module: {exc}") from None
        except Exception as exc:  # JsException: CompileError
            raise EngineError(f"invalid WebAssembly module: {_trap_message(exc)}") from None
        compiled = _Compiled(module, info.imports)
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = compiled
        return compiled

    def instantiate(
        self,
        kernel: Any,
        guest: Any,
        host_functions: Sequence[HostFunction],
        wasi: WasiSpec | None,
        limits: InstanceLimits,
    ) -> JsInstance:
        return JsInstance(self, kernel, guest, host_functions, wasi, limits)


class _GuestMemory:
    """The guest's exported memory, for the WASI shim."""

    def __init__(self, instance: JsInstance) -> None:
        self._instance = instance

    def _buffer(self) -> Any:
        guest = self._instance._guest
        mem = None if guest is None else getattr(guest.exports, "memory", None)
        if mem is None:
            raise WasmTrap("a WASI call needs the guest to export its memory")
        return mem.buffer

    def read(self, offset: int, length: int) -> bytes:
        buf = self._buffer()
        if offset < 0 or offset + length > buf.byteLength:
            raise WasmTrap("out-of-bounds memory access")
        return Uint8Array.new(buf, offset, length).to_bytes()

    def write(self, offset: int, data: bytes) -> None:
        buf = self._buffer()
        if offset < 0 or offset + len(data) > buf.byteLength:
            raise WasmTrap("out-of-bounds memory access")
        Uint8Array.new(buf, offset, len(data)).assign(data)


class JsInstance:
    def __init__(
        self,
        owner: JsEngine,
        kernel: _Compiled,
        guest: _Compiled,
        host_functions: Sequence[HostFunction],
        wasi: WasiSpec | None,
        limits: InstanceLimits,
    ) -> None:
        self._proxies: list[Any] = []
        self._guest: Any = None
        self._closed = False
        self._exchange = owner._exchange
        self._meter = meter.Meter(self._set_interval)
        check = self._proxy(self._meter.check)
        self._check_fn = WebAssembly.Instance.new(
            owner._trampoline, _obj({"k": _obj({"check": check})})
        ).exports.check
        try:
            self._kernel = WebAssembly.Instance.new(kernel.module, Object.new())
        except Exception as exc:
            raise EngineError(f"cannot instantiate the kernel: {_trap_message(exc)}") from None
        self._memory = self._kernel.exports.memory
        self._arm(self._kernel)

        imports: dict[str, dict[str, Any]] = {"extism:host/env": {}}
        for name in KERNEL_FUNCTIONS:
            imports["extism:host/env"][name] = getattr(self._kernel.exports, name)
        for hf in host_functions:
            imports.setdefault(hf.module, {})[hf.name] = self._proxy(self._wrap(hf))
        if wasi is not None:
            from agent_core.plugins.wasi import MemFS, WasiShim

            names = {i.name for i in guest.imports if i.module == WASI}
            shim = WasiShim(
                wasi.fs if wasi.fs is not None else MemFS(),
                [g for _, g in wasi.preopens],
                wasi.stdout,
                wasi.stderr,
            )
            shim.bind(_GuestMemory(self))
            for name, ftype, fn in shim.functions(names):
                imports.setdefault(WASI, {})[name] = self._proxy(
                    self._wrap(HostFunction(WASI, name, ftype, fn))
                )
        js_imports = _obj({k: _obj(v) for k, v in imports.items()})
        self._meter.start(None)
        try:
            self._guest = WebAssembly.Instance.new(guest.module, js_imports)
        except BaseException as exc:
            self.close()
            name = getattr(exc, "name", "") or type(exc).__name__
            if isinstance(exc, WasiExit):
                raise
            if "LinkError" in str(exc) or name == "LinkError":
                raise EngineError(f"cannot link the plugin: {_trap_message(exc)}") from None
            raise WasmTrap(_trap_message(exc)) from None
        self._arm(self._guest)
        self._funcs: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------------

    def _proxy(self, fn: Callable[..., Any]) -> Any:
        p = create_proxy(fn)
        self._proxies.append(p)
        return p

    def _wrap(self, hf: HostFunction) -> Callable[..., Any]:
        func = hf.func
        params = hf.type.params
        i64_result = hf.type.results == ("i64",)

        def call(*args: Any) -> Any:
            py = [int(a) if t in ("i32", "i64") else a for a, t in zip(args, params, strict=False)]
            result = func(*py)
            if i64_result:
                return BigInt(int(result))
            return result

        return call

    def _arm(self, instance: Any) -> None:
        """Fill the instrumented module's check slot and start its counter."""
        exports = instance.exports
        getattr(exports, meter.METER_TABLE).set(0, self._check_fn)
        getattr(exports, meter.METER_INTERVAL).value = self._meter.interval
        getattr(exports, meter.METER_COUNTER).value = self._meter.interval
        self._intervals = [*getattr(self, "_intervals", []), getattr(exports, meter.METER_INTERVAL)]

    def _set_interval(self, n: int) -> None:
        for g in getattr(self, "_intervals", []):
            g.value = n

    # -- memory --------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        buf = self._memory.buffer
        if offset < 0 or length < 0 or offset + length > buf.byteLength:
            raise IndexError("read outside the kernel memory")
        return Uint8Array.new(buf, offset, length).to_bytes()

    def write(self, offset: int, data: bytes) -> None:
        buf = self._memory.buffer
        if offset < 0 or offset + len(data) > buf.byteLength:
            raise IndexError("write outside the kernel memory")
        Uint8Array.new(buf, offset, len(data)).assign(data)

    def kernel_size(self) -> int:
        return int(self._memory.buffer.byteLength)

    def memory_sizes(self) -> list[int]:
        sizes = [self.kernel_size()]
        mem = getattr(self._guest.exports, "memory", None) if self._guest is not None else None
        if mem is not None:
            sizes.append(int(mem.buffer.byteLength))
        return sizes

    # -- calls ---------------------------------------------------------------------------------

    def kernel(self, name: str, *args: int) -> int | None:
        self._check_open()
        results = KERNEL_FUNCTIONS[name][1]
        js_args = [BigInt(a - (1 << 64) if a >= 1 << 63 else a) for a in args]
        result = getattr(self._kernel.exports, name)(*js_args)
        if not results:
            return None
        return int(result) & MASK64 if results[0] == "i64" else int(result)

    def _func(self, name: str) -> Any:
        self._check_open()
        fn = self._funcs.get(name)
        if fn is None:
            fn = getattr(self._guest.exports, name, None)
            if fn is None:
                raise EngineError(f"the plugin has no function {name!r}")
            self._funcs[name] = fn
        return fn

    def call(self, name: str, timeout_ms: int | None) -> int | None:
        fn = self._func(name)
        self._meter.start(timeout_ms)
        try:
            result = fn()
        except BaseException as exc:
            self._raise(exc)
        return None if result is None else int(result)

    def exchange(
        self, name: str, offset: int, data: bytes, timeout_ms: int | None
    ) -> tuple[int, bytes]:
        """Write `data` at `offset` of the kernel memory, call `name`, return (its result, the
        56-byte kernel root after the call), in one crossing into JavaScript. IndexError if
        `data` does not fit (nothing written, nothing called)."""
        fn = self._func(name)
        if self._exchange is None:
            return self._exchange_here(fn, offset, data, timeout_ms)
        self._meter.start(timeout_ms)
        try:
            out = self._exchange(self._memory, fn, offset, to_js(data))
        except BaseException as exc:
            self._raise(exc)
        if out is None or not hasattr(out, "to_bytes"):  # undefined (or a JS null)
            raise IndexError("write outside the kernel memory")
        raw = out.to_bytes()
        return int.from_bytes(raw[:4], "little", signed=True), raw[4:]

    def _exchange_here(
        self, fn: Any, offset: int, data: bytes, timeout_ms: int | None
    ) -> tuple[int, bytes]:
        """`exchange` without the JavaScript helper (the web app's CSP forbids creating one)."""
        self.write(offset, data)
        self._meter.start(timeout_ms)
        try:
            rc = fn()
        except BaseException as exc:
            self._raise(exc)
        return (0 if rc is None else int(rc)), self.read(8, 56)

    def _raise(self, exc: BaseException) -> NoReturn:
        """Translate what a call into wasm raised into the seam's exceptions."""
        if isinstance(exc, WasiExit):
            raise exc
        if self._meter.expired or isinstance(exc, meter.MeterTimeout):
            raise WasmTimeout("the plugin ran past its time limit") from None
        exit_code = _wasi_exit_code(exc)
        if exit_code is not None:
            raise WasiExit(exit_code) from None
        raise WasmTrap(_trap_message(exc)) from None

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("the plugin instance is closed")

    def close(self) -> None:
        self._closed = True
        for p in self._proxies:
            with contextlib.suppress(Exception):  # already destroyed
                p.destroy()
        self._proxies.clear()


def _wasi_exit_code(exc: BaseException) -> int | None:
    """A WasiExit raised by the shim may come back wrapped in a JS error: find its code."""
    text = str(exc)
    marker = "the plugin exited with status "
    if marker in text:
        try:
            return int(text.split(marker, 1)[1].split()[0].rstrip(".:"))
        except ValueError:
            return None
    return None


class XhrHttpClient:
    """`http_request` in the browser: synchronous XMLHttpRequest, which a Web Worker allows (the
    plugin is blocked in a host call, so the request must complete before returning).

    The host has already checked the allowlist; XHR follows redirects by itself, so the final
    URL is checked afterwards and the response dropped if it left the allowed hosts. The browser's
    CORS rules and the page's Content-Security-Policy apply on top (the web app's `connect-src`
    allows only the bridge's origin). Not available under Node (no XMLHttpRequest): there
    plugins get "HTTP is not available". Tested in Chromium: tests/e2e/test_web_plugins.py.
    """

    def request(
        self,
        method: str,
        url: str,
        headers: Any,
        body: bytes | None,
        timeout_s: float,
        max_bytes: int,
        allowed_hosts: list[str],
    ) -> Any:
        from js import XMLHttpRequest  # type: ignore[import-not-found]

        from agent_core.plugins.sandbox import HttpResponse, PluginError, host_allowed

        xhr = XMLHttpRequest.new()
        try:
            xhr.open(method, url, False)
            xhr.responseType = "arraybuffer"
            xhr.timeout = max(1, int(timeout_s * 1000))
            for key, value in headers.items():
                xhr.setRequestHeader(key, value)
            xhr.send(to_js(body) if body else None)
        except Exception as exc:
            why = _trap_message(exc)
            if "NetworkError" in why or "Failed to load" in why:
                why += (
                    " (the browser refused the request or could not reach the host: a network"
                    " error, CORS, or the web app's Content-Security-Policy, which lets it"
                    " connect to the bridge's own origin only)"
                )
            raise PluginError(f"HTTP request to {url} failed: {why}", "error") from None
        final = str(xhr.responseURL or url)
        if not host_allowed(final, allowed_hosts):
            raise PluginError(
                f"HTTP redirect to {final} is not allowed (host not in allowed_hosts)", "forbidden"
            )
        data = Uint8Array.new(xhr.response).to_bytes() if xhr.response else b""
        if len(data) > max_bytes:
            raise PluginError(
                f"HTTP response from {url} exceeds the plugin's limit of {max_bytes} bytes",
                "too_big",
            )
        hdrs = {}
        for line in str(xhr.getAllResponseHeaders() or "").splitlines():
            key, _, value = line.partition(":")
            if key:
                hdrs[key.strip().lower()] = value.strip()
        return HttpResponse(int(xhr.status), data, hdrs)
