"""The envelope codec and the chunk format: round trips, limits, and hostile input."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.rpc.frames import (
    CHUNK_HEADER_SIZE,
    MAX_CHUNK_PAYLOAD,
    MAX_PLAINTEXT,
    Chunk,
    FrameDecoder,
    FrameError,
    chunk_payload,
    encode_chunk,
    encode_envelope,
)
from tests.runtime_support import examples

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def decode_all(frames: list[bytes], decoder: FrameDecoder | None = None) -> list[object]:
    decoder = decoder or FrameDecoder()
    out = []
    for f in frames:
        item = decoder.feed(f)
        if item is not None:
            out.append(item)
    return out


@settings(max_examples=examples(200), deadline=None)
@given(req_id=st.integers(0, 2**32 - 1), args=st.dictionaries(st.text(max_size=20), json_values))
def test_envelope_round_trip(req_id: int, args: dict) -> None:
    env = {"id": req_id, "op": "x.y", "args": args}
    frames = encode_envelope(env)
    assert all(len(f) <= MAX_PLAINTEXT for f in frames)
    assert decode_all(frames) == [env]


@pytest.mark.parametrize("size", [MAX_PLAINTEXT - 100, MAX_PLAINTEXT + 1, 3 * MAX_PLAINTEXT + 7])
def test_large_envelope_is_fragmented_and_reassembled(size: int) -> None:
    env = {"id": 7, "ok": True, "result": {"content": "é" * (size // 2)}}
    frames = encode_envelope(env)
    assert all(len(f) <= MAX_PLAINTEXT for f in frames)
    assert (len(frames) > 1) == (len(json.dumps(env, ensure_ascii=False).encode()) > MAX_PLAINTEXT)
    assert decode_all(frames) == [env]


@settings(max_examples=examples(100), deadline=None)
@given(data=st.binary(max_size=3 * MAX_CHUNK_PAYLOAD), req_id=st.integers(0, 2**32 - 1))
def test_chunk_stream_round_trip(data: bytes, req_id: int) -> None:
    frames = chunk_payload(req_id, data)
    items = decode_all(frames)
    assert all(isinstance(c, Chunk) and c.id == req_id for c in items)
    assert b"".join(c.payload for c in items) == data  # type: ignore[union-attr]
    assert [c.final for c in items] == [False] * (len(items) - 1) + [True]  # type: ignore[union-attr]


def test_chunk_header_layout() -> None:
    frame = encode_chunk(0x01020304, 5, b"abc", final=True)
    assert frame[:CHUNK_HEADER_SIZE] == bytes([0, 1, 1, 2, 3, 4, 0, 0, 0, 5])
    assert frame[CHUNK_HEADER_SIZE:] == b"abc"
    with pytest.raises(ValueError):
        encode_chunk(1, 0, b"x" * (MAX_CHUNK_PAYLOAD + 1), final=True)


def test_out_of_order_chunk_is_rejected() -> None:
    dec = FrameDecoder()
    dec.feed(encode_chunk(1, 0, b"a", final=False))
    with pytest.raises(FrameError):
        dec.feed(encode_chunk(1, 2, b"c", final=True))


def test_duplicate_chunk_is_rejected() -> None:
    dec = FrameDecoder()
    frame = encode_chunk(1, 0, b"a", final=False)
    dec.feed(frame)
    with pytest.raises(FrameError):
        dec.feed(frame)


def test_envelope_size_cap() -> None:
    dec = FrameDecoder(max_envelope=100_000)
    frames = encode_envelope({"id": 1, "op": "fs.write", "args": {"content": "x" * 200_000}})
    with pytest.raises(FrameError):
        decode_all(frames, dec)


@pytest.mark.parametrize(
    "frame", [b"", b"[1,2]", b"\x01abc", b"\x00\x00\x00", b"\x00\x80" + bytes(8), b'{"a":']
)
def test_bad_frames(frame: bytes) -> None:
    with pytest.raises(ValueError):  # FrameError and JSONDecodeError are both ValueErrors
        FrameDecoder().feed(frame)


@settings(max_examples=examples(500), deadline=None)
@given(frames=st.lists(st.binary(max_size=200), max_size=10))
def test_random_frames_never_crash(frames: list[bytes]) -> None:
    dec = FrameDecoder(max_envelope=10_000)
    for f in frames:
        with contextlib.suppress(ValueError):
            dec.feed(f)


@settings(max_examples=examples(300), deadline=None)
@given(
    env=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    pos=st.integers(0, 10_000),
    byte=st.integers(0, 255),
)
def test_mutated_envelopes_never_crash(env: dict, pos: int, byte: int) -> None:
    frame = bytearray(encode_envelope({"id": 1, **env})[0])
    frame[pos % len(frame)] = byte
    try:
        out = FrameDecoder().feed(bytes(frame))
    except ValueError:
        return
    assert out is None or isinstance(out, (dict, Chunk))


def test_retired_request_drops_late_chunks_until_reused() -> None:
    dec = FrameDecoder()
    dec.feed(encode_chunk(9, 0, b"a", final=False))
    dec.retire(9)
    assert dec.feed(encode_chunk(9, 5, b"late", final=False)) is None
    dec.activate(9)
    with pytest.raises(FrameError):  # a reused id starts its stream at 0 again
        dec.feed(encode_chunk(9, 6, b"x", final=True))
    assert isinstance(dec.feed(encode_chunk(9, 0, b"x", final=True)), Chunk)
