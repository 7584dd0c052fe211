"""The kernel module: Kite's implementation of the Extism kernel ABI (`kernel.wat`).

The browser has no WAT compiler, so the compiled `kernel.wasm` ships next to its source;
`python -m agent_core.plugins.kernel` rebuilds it (wasmtime's `wat2wasm`) and the tests check
that the shipped bytes are exactly what the source compiles to.

The host reads the kernel's root (and writes the input block) directly, so the layout constants
below must match `kernel.wat`; the tests exercise both against each other.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from functools import cache
from importlib import resources

# Root fields (see kernel.wat): heap_end, input_offset, input_length, output_offset,
# output_length, error, free_count — seven u64 at offset 8.
ROOT_OFFSET = 8
ROOT = struct.Struct("<7Q")
HEAP = 64  # first block header
HEADER = struct.Struct("<2Q")  # capacity, used
HEADER_SIZE = 16
FIRST_HANDLE = HEAP + HEADER_SIZE
FREE = 0xFFFF_FFFF_FFFF_FFFF

# Exports a guest may import from `extism:host/env` that the kernel implements, with signatures.
KERNEL_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alloc": (("i64",), ("i64",)),
    "free": (("i64",), ()),
    "length": (("i64",), ("i64",)),
    "length_unsafe": (("i64",), ("i64",)),
    "load_u8": (("i64",), ("i32",)),
    "load_u64": (("i64",), ("i64",)),
    "store_u8": (("i64", "i32"), ()),
    "store_u64": (("i64", "i64"), ()),
    "input_set": (("i64", "i64"), ()),
    "input_length": ((), ("i64",)),
    "input_offset": ((), ("i64",)),
    "input_load_u8": (("i64",), ("i32",)),
    "input_load_u64": (("i64",), ("i64",)),
    "output_set": (("i64", "i64"), ()),
    "output_length": ((), ("i64",)),
    "output_offset": ((), ("i64",)),
    "error_set": (("i64",), ()),
    "error_get": ((), ("i64",)),
    "reset": ((), ()),
    "memory_bytes": ((), ("i64",)),
}


def block_capacity(n: int) -> int:
    """The capacity the kernel gives an allocation of `n` bytes (rounded up to 8)."""
    return (n + 7) & ~7


@cache
def kernel_wasm() -> bytes:
    """The shipped kernel module."""
    return resources.files(__package__).joinpath("kernel.wasm").read_bytes()


def kernel_wat() -> str:
    return resources.files(__package__).joinpath("kernel.wat").read_text(encoding="utf-8")


def build_kernel() -> bytes:
    """Compile `kernel.wat` (needs wasmtime, so CPython only)."""
    import wasmtime

    return bytes(wasmtime.wat2wasm(kernel_wat()))


def main() -> int:
    """Rebuild kernel.wasm from kernel.wat and print its size and sha256."""
    out = resources.files(__package__).joinpath("kernel.wasm")
    data = build_kernel()
    with resources.as_file(out) as path:
        path.write_bytes(data)
    print(f"kernel.wasm: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
