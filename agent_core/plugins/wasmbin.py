"""Just enough of the WebAssembly binary format to inspect and constrain a plugin module.

Both engines get the same module bytes, so the sandbox limits that can be written into the
module itself are applied here, once, in plain Python: every memory's and table's maximum is
rewritten to fit the plugin's budget before the engine compiles it. That is how the browser
engine caps memory at all (a `WebAssembly.Memory` has no limiter callback), and doing the same
on wasmtime keeps the two engines' behaviour identical (`memory.grow` fails at the same size).
Imports and exports are read here too, so a module is checked before any engine sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAGIC = b"\x00asm\x01\x00\x00\x00"
PAGE = 65536

# Section ids.
SEC_CUSTOM, SEC_TYPE, SEC_IMPORT, SEC_FUNCTION, SEC_TABLE, SEC_MEMORY = 0, 1, 2, 3, 4, 5
SEC_GLOBAL, SEC_EXPORT, SEC_START, SEC_CODE = 6, 7, 8, 10

VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}
KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


class WasmFormatError(ValueError):
    """The bytes are not a WebAssembly module this host can load."""


@dataclass(frozen=True)
class FuncType:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


@dataclass(frozen=True)
class Import:
    module: str
    name: str
    kind: str  # "func" | "table" | "memory" | "global" | "tag"
    type: FuncType | None = None  # for functions


@dataclass(frozen=True)
class Export:
    name: str
    kind: str
    index: int


@dataclass(frozen=True)
class Limits:
    """A memory's or table's limits; `offset`/`end` locate the encoding in the module."""

    minimum: int
    maximum: int | None
    flags: int
    offset: int
    end: int


@dataclass
class ModuleInfo:
    types: list[FuncType] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    func_types: list[int] = field(default_factory=list)  # type index per function (imports first)
    memories: list[Limits] = field(default_factory=list)  # defined (not imported) memories
    tables: list[Limits] = field(default_factory=list)  # defined tables
    has_start: bool = False

    def export_type(self, name: str) -> FuncType | None:
        """The signature of an exported function, or None if there is no such function."""
        for e in self.exports:
            if e.name == name and e.kind == "func":
                return self.types[self.func_types[e.index]]
        return None

    @property
    def func_exports(self) -> list[str]:
        return [e.name for e in self.exports if e.kind == "func"]


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise WasmFormatError("unexpected end of module")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise WasmFormatError("LEB128 number too long")

    def name(self) -> str:
        n = self.u32()
        raw = self.data[self.pos : self.pos + n]
        if len(raw) != n:
            raise WasmFormatError("unexpected end of module")
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WasmFormatError("a name is not valid UTF-8") from exc

    def valtype(self) -> str:
        b = self.byte()
        if b in VALTYPES:
            return VALTYPES[b]
        if b in (0x70, 0x6F):
            return "funcref" if b == 0x70 else "externref"
        raise WasmFormatError(f"unsupported value type 0x{b:02x}")

    def limits(self) -> Limits:
        start = self.pos
        flags = self.byte()
        if flags & ~0x07:
            raise WasmFormatError(f"unsupported limits flags 0x{flags:02x}")
        minimum = self.u32()
        maximum = self.u32() if flags & 1 else None
        return Limits(minimum, maximum, flags, start, self.pos)


def sections(data: bytes) -> list[tuple[int, int, int]]:
    """(id, payload start, payload end) for each section; checks the header."""
    if data[:8] != MAGIC:
        raise WasmFormatError("not a WebAssembly module (bad magic or version)")
    r = _Reader(data, 8)
    out = []
    while r.pos < len(data):
        sid = r.byte()
        size = r.u32()
        start = r.pos
        end = start + size
        if end > len(data):
            raise WasmFormatError("a section runs past the end of the module")
        out.append((sid, start, end))
        r.pos = end
    return out


def parse(data: bytes) -> ModuleInfo:
    """Read the types, imports, exports, memories and tables of a module."""
    info = ModuleInfo()
    for sid, start, _end in sections(data):
        r = _Reader(data, start)
        if sid == SEC_TYPE:
            for _ in range(r.u32()):
                form = r.byte()
                if form != 0x60:
                    raise WasmFormatError("unsupported type form (GC proposal?)")
                params = tuple(r.valtype() for _ in range(r.u32()))
                results = tuple(r.valtype() for _ in range(r.u32()))
                info.types.append(FuncType(params, results))
        elif sid == SEC_IMPORT:
            for _ in range(r.u32()):
                module, name = r.name(), r.name()
                kind = r.byte()
                if kind == 0:
                    tidx = r.u32()
                    if tidx >= len(info.types):
                        raise WasmFormatError("import refers to a missing type")
                    info.func_types.append(tidx)
                    info.imports.append(Import(module, name, "func", info.types[tidx]))
                elif kind == 1:
                    r.valtype()
                    r.limits()
                    info.imports.append(Import(module, name, "table"))
                elif kind == 2:
                    r.limits()
                    info.imports.append(Import(module, name, "memory"))
                elif kind == 3:
                    r.valtype()
                    r.byte()
                    info.imports.append(Import(module, name, "global"))
                elif kind == 4:
                    r.byte()
                    r.u32()
                    info.imports.append(Import(module, name, "tag"))
                else:
                    raise WasmFormatError(f"unknown import kind {kind}")
        elif sid == SEC_FUNCTION:
            info.func_types.extend(r.u32() for _ in range(r.u32()))
        elif sid == SEC_TABLE:
            for _ in range(r.u32()):
                if data[r.pos] == 0x40:
                    raise WasmFormatError("tables with initializers are not supported")
                r.valtype()
                info.tables.append(r.limits())
        elif sid == SEC_MEMORY:
            info.memories.extend(r.limits() for _ in range(r.u32()))
        elif sid == SEC_EXPORT:
            for _ in range(r.u32()):
                name = r.name()
                kind = r.byte()
                info.exports.append(Export(name, KINDS.get(kind, str(kind)), r.u32()))
        elif sid == SEC_START:
            info.has_start = True
    return info


def _u32_leb(n: int, width: int = 0) -> bytes:
    """LEB128 of `n`, padded to `width` bytes when given (so an encoding keeps its size)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n or (width and len(out) + 1 < width):
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    return bytes(out)


def _limits(flags: int, minimum: int, maximum: int) -> bytes:
    return bytes([flags | 1]) + _u32_leb(minimum) + _u32_leb(maximum)


def cap_limits(data: bytes, memory_pages: list[int], table_elements: int) -> bytes:
    """Return `data` with each defined memory's maximum set to at most `memory_pages[i]`
    and each defined table's to at most `table_elements`.

    Raises `WasmFormatError` when a module needs more at start than it is allowed, or uses a
    64-bit or shared memory (whose limits this host does not manage).
    """
    info = parse(data)
    if len(memory_pages) != len(info.memories):
        raise ValueError("one page budget per defined memory")
    edits: list[tuple[Limits, bytes]] = []
    for lim, budget in zip(info.memories, memory_pages, strict=True):
        if lim.flags & 0x06:
            raise WasmFormatError("shared and 64-bit memories are not supported")
        if lim.minimum > budget:
            raise WasmFormatError(
                f"the module needs {lim.minimum * PAGE // 1024} KiB of memory at start, "
                f"more than its cap of {budget * PAGE // 1024} KiB"
            )
        new_max = budget if lim.maximum is None else min(lim.maximum, budget)
        edits.append((lim, _limits(lim.flags, lim.minimum, new_max)))
    for lim in info.tables:
        if lim.flags & 0x06:
            raise WasmFormatError("64-bit tables are not supported")
        if lim.minimum > table_elements:
            raise WasmFormatError(f"a table starts with {lim.minimum} elements, over the cap")
        new_max = table_elements if lim.maximum is None else min(lim.maximum, table_elements)
        edits.append((lim, _limits(lim.flags, lim.minimum, new_max)))
    if not edits:
        return data
    return _splice_sections(data, edits)


def _splice_sections(data: bytes, edits: list[tuple[Limits, bytes]]) -> bytes:
    """Apply byte-range replacements, re-encoding the size of every section that changed."""
    out = bytearray(data[:8])
    for sid, start, end in sections(data):
        inside = sorted((e for e in edits if start <= e[0].offset < end), key=lambda e: e[0].offset)
        payload = bytearray()
        pos = start
        for lim, new in inside:
            payload += data[pos : lim.offset]
            payload += new
            pos = lim.end
        payload += data[pos:end]
        out.append(sid)
        out += _u32_leb(len(payload))
        out += payload
    return bytes(out)
