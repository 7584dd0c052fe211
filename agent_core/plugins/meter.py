"""Time limits for engines without interruption: instrument a module to check a deadline.

The browser's `WebAssembly` cannot interrupt a running call, and running plugins in a worker we
could terminate would put every host function call behind a cross-thread round trip. So the module
itself is made to check the time: a counter global is decremented at every function entry and
every loop iteration, and when it runs out the module calls a check function through a one-slot
table the host fills. The check (`JsInstance._check`) raises past the deadline and otherwise
retunes the interval so that checks happen every few milliseconds: a tight loop pays a global
decrement and a compare per iteration, nothing else.

Appending a type, a table, two globals and two exports shifts no existing index, so nothing else
in the module needs rewriting; only function bodies grow. Debug info offsets go stale (harmless).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent_core.plugins.wasmbin import (
    SEC_CODE,
    SEC_CUSTOM,
    SEC_EXPORT,
    SEC_GLOBAL,
    SEC_TABLE,
    SEC_TYPE,
    WasmFormatError,
    _Reader,
    _u32_leb,
    parse,
    sections,
)

METER_TABLE = "__kite_meter"
METER_INTERVAL = "__kite_interval"
METER_COUNTER = "__kite_counter"
INITIAL_INTERVAL = 100_000

# Where each known section goes (custom sections keep their place).
_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}
_VALTYPE_BYTES = {0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F, 0x40}


def _s_leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _vec(items: list[bytes]) -> bytes:
    return _u32_leb(len(items)) + b"".join(items)


def _skip_sleb(r: _Reader) -> None:
    while r.byte() & 0x80:
        pass


def _blocktype(r: _Reader) -> None:
    b = r.data[r.pos]
    if b in _VALTYPE_BYTES:
        r.pos += 1
    elif b in (0x63, 0x64):  # (ref null? ht)
        r.pos += 1
        _skip_sleb(r)
    else:
        _skip_sleb(r)  # a type index, s33


def _memarg(r: _Reader) -> None:
    align = r.u32()
    if align & 0x40:
        r.u32()  # memory index (multi-memory)
    r.u32()  # offset (u64 LEB, same skipping)


_NO_IMM = set(range(0x45, 0xC5)) | {0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B, 0xD1}
_U32 = {0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x18, 0x20, 0x21, 0x22}
_U32 |= {0x23, 0x24, 0x25, 0x26, 0x3F, 0x40, 0xD2, 0xD4, 0xD6}
_U32_U32 = {0x11, 0x13}
_FC_IMM = {8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1}


def _instrument_expr(code: bytes, start: int, check: bytes) -> bytes:
    """Copy an expression, inserting `check` right after every `loop` and its block type."""
    r = _Reader(code, start)
    out = bytearray()
    last = start
    n = len(code)
    while r.pos < n:
        op = r.byte()
        if op in _NO_IMM:
            continue
        if op in (0x02, 0x04, 0x06):
            _blocktype(r)
        elif op == 0x03:
            _blocktype(r)
            out += code[last : r.pos]
            out += check
            last = r.pos
        elif op in _U32:
            r.u32()
        elif op in _U32_U32:
            r.u32()
            r.u32()
        elif op == 0x0E:
            for _ in range(r.u32() + 1):
                r.u32()
        elif op == 0x1C:
            for _ in range(r.u32()):
                r.valtype()
        elif 0x28 <= op <= 0x3E:
            _memarg(r)
        elif op in (0x41, 0x42):
            _skip_sleb(r)
        elif op == 0x43:
            r.pos += 4
        elif op == 0x44:
            r.pos += 8
        elif op == 0xD0:
            b = r.data[r.pos]
            if b in _VALTYPE_BYTES or b >= 0x69:
                r.pos += 1
            else:
                _skip_sleb(r)
        elif op == 0x1F:  # try_table: blocktype, then catch clauses
            _blocktype(r)
            for _ in range(r.u32()):
                kind = r.byte()
                if kind in (0, 1):
                    r.u32()
                r.u32()
        elif op == 0xFC:
            sub = r.u32()
            for _ in range(_FC_IMM.get(sub, 0)):
                r.u32()
        elif op == 0xFD:
            sub = r.u32()
            if sub <= 11 or sub in (92, 93):
                _memarg(r)
            elif sub in (12, 13):
                r.pos += 16
            elif 21 <= sub <= 34:
                r.pos += 1
            elif 84 <= sub <= 91:
                _memarg(r)
                r.pos += 1
        elif op == 0xFE:
            sub = r.u32()
            if sub == 0x03:
                r.pos += 1
            else:
                _memarg(r)
        else:
            raise WasmFormatError(f"cannot meter instruction 0x{op:02x} (unsupported proposal)")
    out += code[last:]
    return bytes(out)


def _locals_end(code: bytes, start: int) -> int:
    r = _Reader(code, start)
    for _ in range(r.u32()):
        r.u32()
        b = r.byte()
        if b in (0x63, 0x64):
            _skip_sleb(r)
    return r.pos


def instrument(data: bytes) -> bytes:
    """Return `data` with deadline checks, plus exports `__kite_meter` (a one-slot funcref table
    for the `() -> ()` check function), `__kite_interval` (the checks' spacing) and
    `__kite_counter` (iterations left before the next check; set it to the interval once the
    table is filled)."""
    info = parse(data)
    if any(e.name in (METER_TABLE, METER_INTERVAL, METER_COUNTER) for e in info.exports):
        return data  # already instrumented
    n_types = len(info.types)
    n_tables = sum(1 for i in info.imports if i.kind == "table") + len(info.tables)
    n_globals = sum(1 for i in info.imports if i.kind == "global")
    secs = [(sid, bytearray(data[s:e])) for sid, s, e in sections(data)]

    def section(sid: int) -> bytearray | None:
        for s, payload in secs:
            if s == sid:
                return payload
        return None

    def append_items(sid: int, items: list[bytes]) -> None:
        payload = section(sid)
        if payload is None:
            payload = bytearray(b"\x00")
            pos = len(secs)
            for i, (s, _) in enumerate(secs):
                if s != SEC_CUSTOM and _ORDER[s] > _ORDER[sid]:
                    pos = i
                    break
            secs.insert(pos, (sid, payload))
        r = _Reader(bytes(payload))
        count = r.u32()
        rest = bytes(payload[r.pos :])
        payload[:] = _u32_leb(count + len(items)) + rest + b"".join(items)

    gsec = section(SEC_GLOBAL)
    n_globals += _Reader(bytes(gsec)).u32() if gsec is not None else 0
    counter, interval = n_globals, n_globals + 1
    append_items(SEC_TYPE, [b"\x60\x00\x00"])
    append_items(SEC_TABLE, [b"\x70\x01\x01\x01"])
    append_items(
        SEC_GLOBAL,
        # the counter starts at its maximum: no check (the table is still empty) while a start
        # function runs; the host sets it to the interval once it has filled the table
        [
            b"\x7f\x01\x41" + _s_leb(0x7FFF_FFFF) + b"\x0b",
            b"\x7f\x01\x41" + _s_leb(INITIAL_INTERVAL) + b"\x0b",
        ],
    )
    exports = [
        _u32_leb(len(METER_TABLE)) + METER_TABLE.encode() + b"\x01" + _u32_leb(n_tables),
        _u32_leb(len(METER_INTERVAL)) + METER_INTERVAL.encode() + b"\x03" + _u32_leb(interval),
        _u32_leb(len(METER_COUNTER)) + METER_COUNTER.encode() + b"\x03" + _u32_leb(counter),
    ]
    append_items(SEC_EXPORT, exports)

    g, gi = _u32_leb(counter), _u32_leb(interval)
    check = (
        b"\x23" + g + b"\x41\x01\x6b\x24" + g  # counter -= 1
        + b"\x23" + g + b"\x41\x00\x4c\x04\x40"  # if counter <= 0:
        + b"\x41\x00\x11" + _u32_leb(n_types) + _u32_leb(n_tables)  # call_indirect check
        + b"\x23" + gi + b"\x24" + g  # counter = interval
        + b"\x0b"
    )  # fmt: skip
    code = section(SEC_CODE)
    if code is not None:
        r = _Reader(bytes(code))
        bodies = []
        for _ in range(r.u32()):
            size = r.u32()
            body = bytes(code[r.pos : r.pos + size])
            r.pos += size
            split = _locals_end(body, 0)
            new = body[:split] + check + _instrument_expr(body, split, check)
            bodies.append(_u32_leb(len(new)) + new)
        code[:] = _vec(bodies)

    out = bytearray(data[:8])
    for sid, payload in secs:
        out.append(sid)
        out += _u32_leb(len(payload))
        out += payload
    return bytes(out)


class MeterTimeout(Exception):
    """Raised by the check function past the deadline (the engine reports a timeout)."""


class Meter:
    """The deadline check an instrumented module calls, shared by the engines that use it.

    It keeps checks a few milliseconds apart whatever the loop: the interval doubles while checks
    come faster than `FAST_S` and halves when they come slower than `SLOW_S`, so a plugin runs at
    most about `SLOW_S` past its deadline and a tight loop pays almost nothing.
    """

    FAST_S = 0.001
    SLOW_S = 0.010
    MIN_INTERVAL = 64
    MAX_INTERVAL = 1 << 30

    def __init__(self, set_interval: Callable[[int], None]) -> None:
        self._set_interval = set_interval
        self.interval = INITIAL_INTERVAL
        self.deadline = float("inf")
        self._last = 0.0
        self.expired = False
        self.checks = 0

    def start(self, timeout_ms: int | None) -> None:
        now = time.monotonic()
        self.deadline = float("inf") if timeout_ms is None else now + timeout_ms / 1000
        self._last = now
        self.expired = False

    def check(self) -> None:
        now = time.monotonic()
        self.checks += 1
        if now > self.deadline:
            self.expired = True
            raise MeterTimeout("the plugin ran past its time limit")
        elapsed = now - self._last
        self._last = now
        if elapsed < self.FAST_S and self.interval < self.MAX_INTERVAL:
            self.interval *= 2
            self._set_interval(self.interval)
        elif elapsed > self.SLOW_S and self.interval > self.MIN_INTERVAL:
            self.interval //= 2
            self._set_interval(self.interval)
