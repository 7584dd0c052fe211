"""Fuzz targets: each takes one input (bytes) and raises only if it found a bug.

They are plain functions of bytes, so a crash input replays without atheris (tests/test_fuzz.py
replays every file under tests/fuzz/regressions/). The contract each one checks:

* `frames`: a stream of plaintext frames into one `FrameDecoder` (as the bridge and the client
  feed it) raises only `FrameError` (the connection closes) or `ValueError` (malformed JSON:
  answered with EINVAL, the session goes on); it yields only dicts, data chunks within the size
  limit, or None, and never buffers more than its envelope cap.
* `envelope`: `parse_envelope` raises only `FrameError`/`ValueError`; what it accepts re-encodes
  (`encode_envelope`) and decodes to the same object.
* `chunks`: a payload split into chunks (`chunk_payload`), then delivered in a fuzz-chosen order
  with drops, duplicates and bit flips: the decoder yields exactly the original bytes, in order,
  or raises `FrameError` at the first deviation; never different bytes.
* `handshake_server`: arbitrary message 1 / message 3 bytes into `ServerHandshake` (connect and
  pair modes): only `NoiseError`/`CryptoError`, and never a completed handshake.
* `handshake_mitm`: a real client/server handshake (deterministic keys) whose messages a
  man in the middle may flip bits in: any change makes the handshake fail; none lets both sides
  complete, and an untouched one yields working, matching transports.
* `transport`: frames encrypted by one side, delivered in order or with drops, duplicates,
  reorders and bit flips: the receiver returns exactly what was sent, or fails at the first
  deviation.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from agent_core.channel.crypto import CryptoError, KeyPair
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import (
    SUBPROTOCOL_CONNECT,
    SUBPROTOCOL_PAIR,
    ClientHandshake,
    ServerHandshake,
)
from agent_core.channel.noise import NoiseError, Transport
from agent_core.rpc.frames import (
    MAX_CHUNK_PAYLOAD,
    Chunk,
    FrameDecoder,
    FrameError,
    chunk_payload,
    encode_envelope,
    parse_envelope,
)

# Known, reported bugs the targets step over so fuzzing keeps looking for new ones. Each must have
# a strict-xfail regression test in tests/test_fuzz.py that fails loudly once the bug is fixed,
# and the allowance must then be removed. None is open (deeply nested JSON, once RecursionError,
# is a ValueError since agent_core/rpc/frames.py was fixed).
KNOWN_BUGS: tuple[type[BaseException], ...] = ()

SMALL_ENVELOPE_CAP = 16 * 1024


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never suspends (the CPython crypto backend never waits)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


def _split(data: bytes) -> list[bytes]:
    """Length-prefixed pieces (u16 big-endian), the tail as the last piece."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        (n,) = struct.unpack_from(">H", data, pos)
        pos += 2
        out.append(data[pos : pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


def frames(data: bytes) -> None:
    dec = FrameDecoder(max_envelope=SMALL_ENVELOPE_CAP)
    for frame in _split(data):
        if frame[:1] == b"\xff" and len(frame) == 6:  # a control piece: retire / activate an id
            (rid,) = struct.unpack_from(">I", frame, 2)
            (dec.retire if frame[1] & 1 else dec.activate)(rid)
            continue
        try:
            item = dec.feed(frame)
        except FrameError:
            dec = FrameDecoder(max_envelope=SMALL_ENVELOPE_CAP)  # the connection would close
            continue
        except KNOWN_BUGS:
            continue
        except ValueError:
            continue  # malformed JSON: EINVAL, the session continues
        assert item is None or isinstance(item, (dict, Chunk)), type(item)
        if isinstance(item, Chunk):
            assert len(item.payload) <= MAX_CHUNK_PAYLOAD
        for parts in dec._fragments.values():  # each partial envelope within the cap
            assert sum(len(p) for p in parts) <= SMALL_ENVELOPE_CAP


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=True, ensure_ascii=True)


def envelope(data: bytes) -> None:
    try:
        obj = parse_envelope(data)
    except KNOWN_BUGS:
        return
    except (FrameError, ValueError):
        return
    assert isinstance(obj, dict)
    try:
        wire = encode_envelope(obj)
    except UnicodeEncodeError:
        return  # a lone surrogate from "\ud800": not sendable (see test_security for the bridge)
    except ValueError:
        return  # larger than one frame without an integer id: refused, not mangled
    except KNOWN_BUGS:
        return
    dec = FrameDecoder()
    got = None
    for w in wire:
        got = dec.feed(w)
    assert got is not None and _canon(got) == _canon(obj)


def chunks(data: bytes) -> None:
    if len(data) < 6:
        return
    rid = struct.unpack_from(">I", data, 0)[0]
    size = data[4] * 700  # up to ~178 KB: several chunks
    plan = data[5:]
    payload = hashlib.shake_256(data[:5]).digest(size) if size else b""
    stream = chunk_payload(rid, payload)
    wire: list[bytes] = []
    moved = False  # whole chunks dropped, duplicated or swapped
    forged = False  # a header rewritten: only the "no crash" contract applies (in real use the
    # Noise layer authenticates every frame, so only the peer itself can forge a header)
    i = 0
    for b in plan[:64]:
        action, arg = b & 0x7, b >> 3
        if i >= len(stream):
            break
        if action == 0:  # drop
            i += 1
            moved = True
        elif action == 1 and wire:  # duplicate the last delivered
            wire.append(wire[-1])
            moved = True
        elif action == 2 and i + 1 < len(stream):  # swap with the next
            wire += [stream[i + 1], stream[i]]
            i += 2
            moved = True
        elif action == 3:  # flip a bit of the header
            f = bytearray(stream[i])
            f[1 + arg % 9] ^= 1 << (arg % 8)
            wire.append(bytes(f))
            forged = True
            i += 1
        else:
            wire.append(stream[i])
            i += 1
    wire += stream[i:]
    dec = FrameDecoder()
    got = bytearray()
    final = False
    try:
        for w in wire:
            item = dec.feed(w)
            if isinstance(item, Chunk) and item.id == rid:
                got += item.payload
                if item.final:
                    final = True
                    break
            elif isinstance(item, dict):  # only from a flipped ENVELOPE bit
                assert forged
    except (FrameError, ValueError):
        assert moved or forged, "an untouched chunk stream was refused"
        if not forged:
            assert payload.startswith(bytes(got)), "wrong bytes before the refusal"
        return
    if not forged:
        # Nothing refused: what moved came after the FINAL chunk, or the tail was dropped (the
        # stream is then incomplete, which the op's timeout handles). Never other bytes.
        if final:
            assert bytes(got) == payload, "a gap, duplicate or reorder went unnoticed"
        else:
            assert payload.startswith(bytes(got)), "a gap went unnoticed"


# -- Noise ---------------------------------------------------------------------------------------


class _DeterministicBackend(CpythonCryptoBackend):
    """Ephemeral keys derived from a seed: a crash input replays exactly."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._n = 0

    async def generate_keypair(self) -> KeyPair:
        self._n += 1
        raw = hashlib.sha256(self._seed + self._n.to_bytes(4, "big")).digest()
        return self.keypair_from_private_bytes(raw)


_FIXED = _DeterministicBackend(b"fixed keys")
SERVER_STATIC = _FIXED.keypair_from_private_bytes(hashlib.sha256(b"server").digest())
CLIENT_STATIC = _FIXED.keypair_from_private_bytes(hashlib.sha256(b"client").digest())
PSK = hashlib.sha256(b"pairing secret").digest()
_REFUSALS = (NoiseError, CryptoError)


def handshake_server(data: bytes) -> None:
    if not data:
        return
    mode = SUBPROTOCOL_PAIR if data[0] & 1 else SUBPROTOCOL_CONNECT
    pieces = [*_split(data[1:]), b"", b""]
    backend = _DeterministicBackend(data[:1])
    hs = ServerHandshake(backend, mode=mode, static=SERVER_STATIC, info={"server": "fuzz"})
    try:
        _run(hs.respond(pieces[0]))
    except _REFUSALS:
        return
    try:
        result = _run(hs.finish(pieces[1], [PSK] if mode == SUBPROTOCOL_PAIR else None))
    except _REFUSALS:
        return
    raise AssertionError(f"a handshake from fuzzed bytes completed: {result!r}")


def _handshake(
    mode: str, seed: bytes, mitm: Callable[[int, bytes], bytes]
) -> tuple[Transport, Transport]:
    """A full handshake; `mitm(i, msg)` may change message i (0, 1, 2) on the wire."""
    backend = _DeterministicBackend(seed)
    psk = PSK if mode == SUBPROTOCOL_PAIR else None
    client = ClientHandshake(
        backend, mode=mode, static=CLIENT_STATIC, host_key=SERVER_STATIC.public, psk=psk,
        info={"name": "fuzz"},
    )  # fmt: skip
    server = ServerHandshake(backend, mode=mode, static=SERVER_STATIC, info={"server": "fuzz"})
    m1 = mitm(0, _run(client.start()))
    m2 = mitm(1, _run(server.respond(m1)))
    m3 = mitm(2, _run(client.finish(m2)))
    result = _run(server.finish(m3, [PSK] if psk else None))
    assert client.result is not None
    assert result.remote_static == CLIENT_STATIC.public
    return client.result.transport, result.transport


def handshake_mitm(data: bytes) -> None:
    if len(data) < 2:
        return
    mode = SUBPROTOCOL_PAIR if data[0] & 1 else SUBPROTOCOL_CONNECT
    edits = [(data[i] % 3, data[i + 1], data[i + 2]) for i in range(1, len(data) - 2, 3)][:4]
    changed = False

    def mitm(i: int, msg: bytes) -> bytes:
        nonlocal changed
        out = bytearray(msg)
        for which, pos, xor in edits:
            if which == i and xor and out:
                out[pos % len(out)] ^= xor
        changed |= bytes(out) != msg
        return bytes(out)

    try:
        c, s = _handshake(mode, data[:1], mitm)
    except _REFUSALS:
        assert changed, "an untouched handshake failed"
        return
    assert not changed, "a handshake altered in flight completed on both sides"
    assert c.handshake_hash == s.handshake_hash
    msg = data[1:40]
    assert _run(s.decrypt(_run(c.encrypt(msg)))) == msg
    assert _run(c.decrypt(_run(s.encrypt(msg)))) == msg


_PAIR = _handshake(SUBPROTOCOL_CONNECT, b"transport", lambda i, m: m)


def _fresh_pair() -> tuple[Transport, Transport]:
    c, s = _PAIR
    return (
        Transport(c._send.copy(), c._recv.copy(), c.handshake_hash),
        Transport(s._send.copy(), s._recv.copy(), s.handshake_hash),
    )


def transport(data: bytes) -> None:
    c, s = _fresh_pair()
    pieces = _split(data)[:16]
    if not pieces:
        return
    plan, plaintexts = pieces[0], pieces[1:] or [b""]
    sent = [_run(c.encrypt(p)) for p in plaintexts]
    wire: list[tuple[int, bytes]] = []  # (index of the original, bytes)
    i = 0
    for b in plan[:32]:
        action, arg = b & 0x3, b >> 2
        if i >= len(sent):
            break
        if action == 0:
            i += 1  # dropped
        elif action == 1 and wire:
            wire.append(wire[-1])  # replayed
        elif action == 2:
            f = bytearray(sent[i])
            f[arg % len(f)] ^= 1 + (arg & 0x7F)
            wire.append((-1, bytes(f)))  # tampered
            i += 1
        else:
            wire.append((i, sent[i]))
            i += 1
    wire += [(j, sent[j]) for j in range(i, len(sent))]
    for expect, (idx, frame) in enumerate(wire):
        try:
            got = _run(s.decrypt(frame))
        except _REFUSALS:
            assert idx != expect, "an in-order, untouched frame was refused"
            return  # the connection closes at the first bad frame
        assert idx == expect, "a dropped, replayed, reordered or tampered frame was accepted"
        assert got == plaintexts[idx]


def every(data: bytes) -> None:
    """All targets in one process (CI): the first byte picks the target."""
    if data:
        _ALL[data[0] % len(_ALL)](data[1:])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": frames,
    "envelope": envelope,
    "chunks": chunks,
    "handshake_server": handshake_server,
    "handshake_mitm": handshake_mitm,
    "transport": transport,
}
_ALL = list(TARGETS.values())
TARGETS["every"] = every


def seeds(name: str) -> list[bytes]:
    """A few valid inputs per target, so the fuzzer starts from the protocol, not from noise."""

    def lp(*parts: bytes) -> bytes:
        return b"".join(struct.pack(">H", len(p)) + p for p in parts)

    ping = b'{"id":1,"op":"sys.ping","args":{}}'
    write = json.dumps({"id": 2, "op": "fs.write", "args": {"path": "a", "content": "x" * 70000}})
    big = encode_envelope(json.loads(write))
    deep = b'{"id":1,"op":"sys.ping","args":{"a":' + b"[" * 900 + b"]" * 900 + b"}}"
    if name == "frames":
        return [
            lp(deep),
            lp(ping),
            lp(*big[:2]),
            lp(*chunk_payload(3, b"y" * 100)),
            lp(ping, b"\xff\x01\0\0\0\3"),
        ]
    if name == "envelope":
        return [
            deep,
            ping,
            b'{"id":7,"ok":false,"error":{"code":"EINVAL","message":"m"}}',
            b'{"a":[1,2.5,null]}',
        ]
    if name == "chunks":
        return [b"\0\0\0\1\3" + b"\4" * 8, b"\0\0\0\2\x80" + bytes(range(16))]
    if name == "handshake_server":
        return [b"\0" + lp(b"\1" * 32, b"\2" * 64), b"\1" + lp(b"\1" * 48, b"\2" * 96)]
    if name == "handshake_mitm":
        return [b"\0", b"\1", b"\0\2\5\1", b"\1\1\40\x80"]
    if name == "transport":
        return [lp(b"\3\3\3", b"hello", b"world"), lp(b"\1\2", ping, ping)]
    if name == "every":
        names = [n for n in TARGETS if n != "every"]
        return [bytes([i]) + s for i, n in enumerate(names) for s in seeds(n)]
    raise KeyError(name)
