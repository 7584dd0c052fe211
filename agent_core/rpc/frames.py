"""Plaintext frames inside the secure channel: JSON envelopes and binary chunks.

Every Noise transport message carries one plaintext of at most `MAX_PLAINTEXT` bytes:

* starts with `{`  → a UTF-8 JSON envelope (request, response or stream event);
* starts with 0x00 → a binary chunk: a 10-byte header, then payload.

Chunk header (big-endian): `0x00 | flags u8 | request id u32 | seq u32`. Flags: bit 0 `FINAL`
(last chunk of this stream), bit 1 `ENVELOPE` (the payloads of this stream, joined, are one JSON
envelope too large for a single frame). Sequence numbers start at 0 and grow by one, so a
dropped or reordered chunk is detected rather than silently corrupting a file.
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

# A Noise transport message is at most 65535 bytes, 16 of which are the AES-GCM tag.
MAX_PLAINTEXT = 65535 - 16
CHUNK_HEADER = struct.Struct(">BBII")
CHUNK_HEADER_SIZE = CHUNK_HEADER.size
MAX_CHUNK_PAYLOAD = MAX_PLAINTEXT - CHUNK_HEADER_SIZE
FLAG_FINAL = 0x01
FLAG_ENVELOPE = 0x02
_KNOWN_FLAGS = FLAG_FINAL | FLAG_ENVELOPE
MAX_ID = 2**32 - 1
# Largest envelope accepted after reassembly (a 16 MiB text file, JSON-escaped, fits).
DEFAULT_MAX_ENVELOPE = 48 * 1024 * 1024
# Finished request ids remembered so their late chunks can be dropped instead of refused.
MAX_RETIRED = 4096


class FrameError(ValueError):
    """A plaintext frame that breaks the framing rules. The peer is buggy or hostile."""


class Chunk(NamedTuple):
    """One data chunk (a tuple: made once per 64 KiB of a bulk transfer, so made cheaply)."""

    id: int
    seq: int
    final: bool
    payload: bytes


def encode_chunk(
    req_id: int,
    seq: int,
    payload: bytes | bytearray | memoryview,
    *,
    final: bool,
    envelope: bool = False,
) -> bytes:
    """One chunk frame; a memoryview payload is copied once, straight into the frame."""
    if len(payload) > MAX_CHUNK_PAYLOAD:
        raise ValueError(f"chunk payload of {len(payload)} bytes exceeds {MAX_CHUNK_PAYLOAD}")
    flags = (FLAG_FINAL if final else 0) | (FLAG_ENVELOPE if envelope else 0)
    return CHUNK_HEADER.pack(0, flags, req_id, seq) + payload


def decode_chunk(frame: bytes) -> tuple[Chunk, bool]:
    """Return the chunk and whether it is an envelope fragment."""
    if len(frame) < CHUNK_HEADER_SIZE:
        raise FrameError("truncated chunk header")
    marker, flags, req_id, seq = CHUNK_HEADER.unpack_from(frame)
    if marker != 0:
        raise FrameError("not a chunk")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown chunk flags 0x{flags:02x}")
    return Chunk(req_id, seq, bool(flags & FLAG_FINAL), bytes(frame[CHUNK_HEADER_SIZE:])), bool(
        flags & FLAG_ENVELOPE
    )


def _make_dumps() -> Any:
    """Compact UTF-8 JSON. The C encoder is built once rather than per call as `json.dumps`
    with options does (that set-up is more than half the cost of a small envelope)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:  # pragma: no cover - a runtime without _json
        encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        return lambda obj: encoder.encode(obj).encode("utf-8", "backslashreplace")

    def _default(obj: Any) -> Any:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    # markers=None: no cycle check (envelopes are trees built here); allow_nan as json.dumps.
    encode = make(None, _default, basestring, None, ":", ",", False, False, True)
    join = "".join

    def dumps(obj: Any) -> bytes:
        # backslashreplace: a lone surrogate a client sent (and a reply echoes) becomes the
        # JSON escape \udXXX instead of an exception that would end the session.
        if isinstance(obj, (dict, list)):
            return join(encode(obj, 0)).encode("utf-8", "backslashreplace")
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "backslashreplace"
        )

    return dumps


_std_dumps: Callable[[Any], bytes] = _make_dumps()
dumps = _std_dumps  # compact UTF-8 JSON of an envelope; `install_json` may replace it


def encode_envelope(obj: dict[str, Any]) -> list[bytes]:
    """Encode an envelope as one frame, or as envelope chunks when it does not fit in one."""
    data = dumps(obj)
    if len(data) <= MAX_PLAINTEXT:
        return [data]
    req_id = obj.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool) or not 0 <= req_id <= MAX_ID:
        raise ValueError("an envelope too large for one frame needs an integer id")
    return chunk_payload(req_id, data, envelope=True)


def chunk_payload(req_id: int, data: bytes | memoryview, *, envelope: bool = False) -> list[bytes]:
    """Split bytes into a complete chunk stream (at least one chunk, the last one final)."""
    view = memoryview(data)
    n = max(1, -(-len(view) // MAX_CHUNK_PAYLOAD))
    return [
        encode_chunk(
            req_id,
            i,
            bytes(view[i * MAX_CHUNK_PAYLOAD : (i + 1) * MAX_CHUNK_PAYLOAD]),
            final=i == n - 1,
            envelope=envelope,
        )
        for i in range(n)
    ]


class FrameDecoder:
    """Turns plaintext frames into envelopes (dicts) and data chunks.

    Envelope fragments are reassembled here so the layers above see only whole envelopes.
    Data chunks are checked for sequence order per request id and passed through.
    """

    def __init__(self, max_envelope: int = DEFAULT_MAX_ENVELOPE) -> None:
        self.max_envelope = max_envelope
        self._fragments: dict[int, list[bytes]] = {}
        self._fragment_sizes: dict[int, int] = {}
        self._next_seq: dict[int, int] = {}
        self._retired: OrderedDict[int, None] = OrderedDict()

    def feed(self, frame: bytes) -> dict[str, Any] | Chunk | None:
        """Return a whole envelope, a data chunk, or None (a fragment was buffered, or a late
        chunk of a retired request was dropped).

        Raises FrameError for framing violations and ValueError (JSONDecodeError) for bad JSON;
        the caller decides which is fatal.
        """
        if not frame:
            raise FrameError("empty frame")
        first = frame[0]
        if first == 0x7B:  # "{"
            return parse_envelope(frame)
        if first != 0:
            raise FrameError(f"frame starts with 0x{first:02x}: neither '{{' nor 0x00")
        if len(frame) >= CHUNK_HEADER_SIZE:
            # Fast path for the bulk of a transfer: a data chunk in sequence.
            _, flags, req_id, seq = CHUNK_HEADER.unpack_from(frame)
            if (
                flags in (0, FLAG_FINAL)
                and req_id not in self._retired
                and self._next_seq.get(req_id, 0) == seq
            ):
                if flags:
                    self._next_seq.pop(req_id, None)
                else:
                    self._next_seq[req_id] = seq + 1
                return Chunk(req_id, seq, flags == FLAG_FINAL, bytes(frame[CHUNK_HEADER_SIZE:]))
        chunk, is_envelope = decode_chunk(frame)
        if not is_envelope and chunk.id in self._retired:
            return None
        key = chunk.id if not is_envelope else -1 - chunk.id
        expected = self._next_seq.get(key, 0)
        if chunk.seq != expected:
            raise FrameError(
                f"chunk for id {chunk.id} out of order: seq {chunk.seq}, expected {expected}"
            )
        if chunk.final:
            self._next_seq.pop(key, None)
        else:
            self._next_seq[key] = expected + 1
        if not is_envelope:
            return chunk
        size = self._fragment_sizes.get(chunk.id, 0) + len(chunk.payload)
        if size > self.max_envelope:
            self._fragments.pop(chunk.id, None)
            self._fragment_sizes.pop(chunk.id, None)
            raise FrameError(f"envelope for id {chunk.id} exceeds {self.max_envelope} bytes")
        parts = self._fragments.setdefault(chunk.id, [])
        parts.append(chunk.payload)
        self._fragment_sizes[chunk.id] = size
        if not chunk.final:
            return None
        del self._fragments[chunk.id]
        del self._fragment_sizes[chunk.id]
        data = b"".join(parts)
        if not data.startswith(b"{"):
            raise FrameError("reassembled envelope is not a JSON object")
        return parse_envelope(data)

    def retire(self, req_id: int) -> None:
        """The request is over: drop its partial state, and drop its late data chunks quietly
        (a client may still be streaming an upload the bridge already refused)."""
        self._next_seq.pop(req_id, None)
        self._next_seq.pop(-1 - req_id, None)
        self._fragments.pop(req_id, None)
        self._fragment_sizes.pop(req_id, None)
        self._retired[req_id] = None
        if len(self._retired) > MAX_RETIRED:
            self._retired.popitem(last=False)

    def activate(self, req_id: int) -> None:
        """A new request reuses this id: its chunks count again."""
        self._retired.pop(req_id, None)


_scan_once = json.JSONDecoder().scan_once


def _std_parse(data: bytes | bytearray | memoryview) -> Any:
    """Envelopes are UTF-8 by definition, so the text is decoded directly and scanned from its
    first character (`json.loads` would sniff the encoding and match whitespace regexes first);
    anything unusual (trailing whitespace, an error) goes through `json.loads` for its verdict.
    """
    text = str(data, "utf-8")
    try:
        try:
            obj, end = _scan_once(text, 0)
        except StopIteration:
            obj, end = json.loads(text), -1
        else:
            if end != len(text):
                obj = json.loads(text)  # trailing whitespace is fine, anything else raises
    except RecursionError:
        # JSON nested ~1000 deep fits in one frame: bad input like any other, not a crash.
        raise ValueError("JSON nested too deeply") from None
    return obj


_parse: Callable[[bytes | bytearray | memoryview], Any] = _std_parse


def parse_envelope(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse one envelope; ValueError (JSONDecodeError, UnicodeDecodeError) for bad input."""
    obj = _parse(data)
    if not isinstance(obj, dict):
        raise FrameError("envelope is not a JSON object")
    return obj


def standard_json() -> tuple[Callable[[Any], bytes], Callable[[Any], Any]]:
    """The standard library's envelope encoder and parser (what `install_json` falls back on)."""
    return _std_dumps, _std_parse


def install_json(
    dumps_fn: Callable[[Any], bytes], parse_fn: Callable[[bytes | bytearray | memoryview], Any]
) -> None:
    """Route envelope JSON through another codec (`agent_core.runtime.use_native_json`).

    Both must give exactly what `standard_json()` gives (the same bytes' meaning, the same
    value, the same verdict on bad input): a codec hands what it does not handle itself to
    those. Callers that imported `dumps` by name keep the standard one."""
    global dumps, _parse
    dumps, _parse = dumps_fn, parse_fn
