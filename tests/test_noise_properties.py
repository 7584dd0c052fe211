"""Property tests: payloads round-trip, and any altered or random input is refused cleanly.

"Cleanly" means only `NoiseError` or `CryptoError` (which includes `DecryptError`): the channel
code catches exactly those to close a connection, so any other exception type would be a crash.
Runtime-neutral: inside Pyodide they run on the WebCrypto backend, with fewer examples.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.channel.crypto import CryptoError
from agent_core.channel.noise import MAX_MESSAGE, HandshakeState, NoiseError
from tests.runtime_support import examples, run
from tests.test_noise import PATTERNS, connected, exchange, new_pair

REFUSALS = (NoiseError, CryptoError)
BOUNDED = settings(max_examples=examples(200), deadline=None)

patterns = st.sampled_from(PATTERNS)
blobs = st.binary(max_size=2048)


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """A copy of ``original`` that differs from it by construction."""
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "replace"]))
    data = bytearray(original)
    position = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        for index in draw(st.sets(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
            data[index] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[position:]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "insert":
        data[position:position] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "delete":
        del data[position : position + draw(st.integers(1, 64))]
    else:
        return draw(st.binary(max_size=2 * len(data)).filter(lambda b: b != original))
    return bytes(data)


def seeded_bytes(seed: int, size: int) -> bytes:
    """Large random input from a drawn seed: cheap, and reproducible when hypothesis replays."""
    return random.Random(seed).randbytes(size)


junk = st.one_of(
    st.binary(max_size=256),
    st.builds(seeded_bytes, st.integers(0, 2**32), st.integers(MAX_MESSAGE - 8, MAX_MESSAGE + 8)),
)


@BOUNDED
@given(
    pattern=patterns,
    handshake_payloads=st.lists(blobs, min_size=3, max_size=3),
    transport=st.lists(st.tuples(st.booleans(), blobs), max_size=20),
)
def test_payloads_round_trip(
    pattern: str, handshake_payloads: list[bytes], transport: list[tuple[bool, bytes]]
) -> None:
    i, r = new_pair(pattern)
    assert run(exchange(i, r, handshake_payloads)) == handshake_payloads
    ti, tr = i.split(), r.split()
    for from_initiator, data in transport:
        sender, receiver = (ti, tr) if from_initiator else (tr, ti)
        assert run(receiver.decrypt(run(sender.encrypt(data)))) == data


@BOUNDED
@given(pattern=patterns, target=st.integers(0, 2), data=st.data())
def test_altered_handshake_message_never_completes(
    pattern: str, target: int, data: st.DataObject
) -> None:
    """Whichever message is altered, some later read refuses; nobody ends up 'connected'."""
    i, r = new_pair(pattern)

    async def go() -> None:
        for index, payload in enumerate([b"", b'{"server": 1}', b'{"name": "x"}']):
            writer, reader = (i, r) if index % 2 == 0 else (r, i)
            message = await writer.write_message(payload)
            if index == target:
                message = data.draw(mutations(message))
            await reader.read_message(message)

    with pytest.raises(REFUSALS):
        run(go())
    assert not (i.complete and r.complete)


@BOUNDED
@given(pattern=patterns, payload=blobs, data=st.data())
def test_altered_transport_message_is_refused(
    pattern: str, payload: bytes, data: st.DataObject
) -> None:
    ti, tr = connected(pattern)
    message = run(ti.encrypt(payload))
    with pytest.raises(REFUSALS):
        run(tr.decrypt(data.draw(mutations(message))))
    assert run(tr.decrypt(message)) == payload  # the refusal did not consume the nonce


@BOUNDED
@given(
    pattern=patterns,
    target=st.integers(0, 2),
    data=junk,
)
def test_random_bytes_as_handshake_message_are_handled(
    pattern: str, target: int, data: bytes
) -> None:
    """Random input to either side raises nothing but a refusal (XX message 1 may be accepted)."""
    i, r = new_pair(pattern)

    async def go() -> HandshakeState:
        for index in range(target):
            writer, reader = (i, r) if index % 2 == 0 else (r, i)
            await reader.read_message(await writer.write_message(b""))
        reader = r if target % 2 == 0 else i
        await reader.read_message(data)
        return reader

    try:
        reader = run(go())
    except REFUSALS:
        return
    assert pattern == "XX" and target == 0, "only XX message 1 is unauthenticated"
    with contextlib.suppress(*REFUSALS):  # a junk ephemeral can still be refused here
        run(reader.write_message(b""))
