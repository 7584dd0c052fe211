"""Noise XX / XXpsk3: our two sides against each other, and against the `noiseprotocol` package.

Runtime-neutral: on CPython these run on the `cryptography` backend, inside Pyodide on WebCrypto
(see tests/runtime_support.py). The `noiseprotocol` cross-checks are CPython-only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

from agent_core.channel.crypto import CryptoError, DecryptError, KeyPair
from agent_core.channel.noise import (
    MAX_MESSAGE,
    MAX_NONCE,
    MAX_PLAINTEXT,
    PROTOCOL_NAMES,
    CipherState,
    HandshakeError,
    HandshakeState,
    NoiseError,
    Transport,
)
from tests.runtime_support import backend, cpython_only, run

if TYPE_CHECKING:
    from noise.connection import NoiseConnection

BACKEND = backend()
PROLOGUES = {"XX": b"kite.v1", "XXpsk3": b"kite.v1.pair"}
PATTERNS = sorted(PROLOGUES)


def new_keypair() -> KeyPair:
    return run(BACKEND.generate_keypair())


def new_pair(
    pattern: str,
    *,
    psk: bytes | None = None,
    responder_psk: bytes | None = None,
    initiator_static: KeyPair | None = None,
    responder_static: KeyPair | None = None,
) -> tuple[HandshakeState, HandshakeState]:
    """An initiator and a responder; for XXpsk3 both get ``psk`` unless told otherwise."""
    if pattern == "XXpsk3" and psk is None:
        psk = os.urandom(32)
    i = HandshakeState(
        BACKEND,
        pattern=pattern,
        initiator=True,
        prologue=PROLOGUES[pattern],
        static=initiator_static or new_keypair(),
        psk=psk,
    )
    r = HandshakeState(
        BACKEND,
        pattern=pattern,
        initiator=False,
        prologue=PROLOGUES[pattern],
        static=responder_static or new_keypair(),
        psk=responder_psk or psk,
    )
    return i, r


async def exchange(
    i: HandshakeState, r: HandshakeState, payloads: Sequence[bytes] = (b"", b"{}", b"{}")
) -> list[bytes]:
    """Run the three handshake messages and return what each reader got."""
    received = []
    for index, payload in enumerate(payloads):
        writer, reader = (i, r) if index % 2 == 0 else (r, i)
        received.append(await reader.read_message(await writer.write_message(payload)))
    return received


def connected(pattern: str) -> tuple[Transport, Transport]:
    i, r = new_pair(pattern)
    run(exchange(i, r))
    return i.split(), r.split()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- our initiator against our responder -----------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize(
    "payloads",
    [
        (b"", b"", b""),
        (b"", b'{"server": "kite/0.1"}', b'{"name": "phone"}'),
        (b"\x00\xff" * 7, os.urandom(1000), os.urandom(60000)),
    ],
    ids=["empty", "json", "binary"],
)
def test_handshake_delivers_payloads_and_keys(pattern: str, payloads: tuple[bytes, ...]) -> None:
    si, sr = new_keypair(), new_keypair()
    i, r = new_pair(pattern, initiator_static=si, responder_static=sr)
    assert not i.complete and not r.complete
    assert run(exchange(i, r, payloads)) == list(payloads)
    assert i.complete and r.complete
    assert i.remote_static == sr.public
    assert r.remote_static == si.public
    assert i.handshake_hash == r.handshake_hash
    ti, tr = i.split(), r.split()
    assert ti.handshake_hash == tr.handshake_hash == i.handshake_hash


def test_handshake_hash_differs_between_sessions() -> None:
    i1, r1 = new_pair("XX")
    i2, r2 = new_pair("XX")
    run(exchange(i1, r1))
    run(exchange(i2, r2))
    assert i1.handshake_hash != i2.handshake_hash


def test_prologue_mismatch_fails() -> None:
    i, _ = new_pair("XX")
    r = HandshakeState(
        BACKEND, pattern="XX", initiator=False, prologue=b"kite.v2", static=new_keypair()
    )
    run(r.read_message(run(i.write_message(b""))))  # message 1 is not authenticated in XX
    with pytest.raises(HandshakeError) as info:
        run(i.read_message(run(r.write_message(b""))))
    assert isinstance(info.value.__cause__, DecryptError)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_transport_both_directions_many_messages(pattern: str) -> None:
    ti, tr = connected(pattern)
    sizes = [0, 1, 15, 16, 17, 4096, MAX_PLAINTEXT, *range(100, 400)]

    async def go() -> None:
        for n, size in enumerate(sizes):
            sender, receiver = (ti, tr) if n % 3 else (tr, ti)
            plaintext = os.urandom(size)
            message = await sender.encrypt(plaintext)
            assert len(message) == size + 16 <= MAX_MESSAGE
            assert await receiver.decrypt(message) == plaintext

    run(go())


def test_initiator_first_payload_is_plaintext_in_xx_but_not_xxpsk3() -> None:
    """Why message 1 must carry nothing secret: XX has no key yet, XXpsk3 has one from e."""
    secret = b"not-for-eavesdroppers"
    for pattern, visible in [("XX", True), ("XXpsk3", False)]:
        i, _ = new_pair(pattern)
        assert (secret in run(i.write_message(secret))) is visible


# --- tampering, replay, reordering --------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("index", [1, 2])
def test_tampered_handshake_message_is_rejected(pattern: str, index: int) -> None:
    i, r = new_pair(pattern)
    run(exchange(i, r, [b"a", b"b", b"c"][:index]))
    writer, reader = (i, r) if index % 2 == 0 else (r, i)
    message = run(writer.write_message(b"payload"))
    for position in (0, 40, len(message) - 1):
        forked = reader.fork()
        with pytest.raises(HandshakeError):
            run(forked.read_message(flip(message, position)))
    assert run(reader.read_message(message)) == b"payload"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_tampered_transport_message_fails_without_advancing_nonce(pattern: str) -> None:
    ti, tr = connected(pattern)
    message = run(ti.encrypt(b"hello"))
    for position in (0, len(message) - 1):
        with pytest.raises(DecryptError):
            run(tr.decrypt(flip(message, position)))
    with pytest.raises(DecryptError):
        run(tr.decrypt(message[:-1]))
    with pytest.raises(DecryptError):
        run(tr.decrypt(b""))
    assert run(tr.decrypt(message)) == b"hello"


def test_replayed_transport_message_fails() -> None:
    ti, tr = connected("XX")
    message = run(ti.encrypt(b"once"))
    assert run(tr.decrypt(message)) == b"once"
    with pytest.raises(DecryptError):
        run(tr.decrypt(message))


def test_reordered_transport_messages_fail() -> None:
    ti, tr = connected("XX")
    first, second = run(ti.encrypt(b"first")), run(ti.encrypt(b"second"))
    with pytest.raises(DecryptError):
        run(tr.decrypt(second))
    assert run(tr.decrypt(first)) == b"first"
    assert run(tr.decrypt(second)) == b"second"


def test_message_for_the_other_direction_fails() -> None:
    ti, tr = connected("XX")
    message = run(ti.encrypt(b"to the responder"))
    with pytest.raises(DecryptError):
        run(ti.decrypt(message))
    assert run(tr.decrypt(message)) == b"to the responder"


def test_low_order_ephemeral_is_refused() -> None:
    i, r = new_pair("XX")
    run(r.read_message(run(i.write_message(b""))))
    message = run(r.write_message(b""))
    with pytest.raises(HandshakeError) as info:
        run(i.read_message(bytes(32) + message[32:]))
    assert isinstance(info.value.__cause__, CryptoError)


# --- PSK handling ----------------------------------------------------------------------------


def test_wrong_psk_fails_at_message_3_on_the_responder() -> None:
    i, r = new_pair("XXpsk3", psk=b"\x01" * 32, responder_psk=b"\x02" * 32)
    run(r.read_message(run(i.write_message(b""))))
    run(i.read_message(run(r.write_message(b"server"))))
    message = run(i.write_message(b"client"))
    with pytest.raises(HandshakeError) as info:
        run(r.read_message(message))
    assert isinstance(info.value.__cause__, DecryptError)
    assert not r.complete
    with pytest.raises(HandshakeError):  # a failed handshake stays failed
        run(r.read_message(message))


def test_fork_and_set_psk_find_the_right_candidate() -> None:
    right = os.urandom(32)
    candidates = [os.urandom(32), os.urandom(32), right, os.urandom(32)]
    i, _ = new_pair("XXpsk3", psk=right)
    r = HandshakeState(
        BACKEND, pattern="XXpsk3", initiator=False, prologue=b"kite.v1.pair", static=new_keypair()
    )
    run(r.read_message(run(i.write_message(b""))))
    run(i.read_message(run(r.write_message(b'{"server": "kite"}'))))
    message = run(i.write_message(b'{"name": "phone"}'))

    matches = []
    for candidate in candidates:
        attempt = r.fork()
        attempt.set_psk(candidate)
        try:
            payload = run(attempt.read_message(message))
        except HandshakeError:
            continue
        matches.append((candidate, attempt, payload))
    assert [(c, p) for c, _, p in matches] == [(right, b'{"name": "phone"}')]
    ti, tr = i.split(), matches[0][1].split()
    assert run(tr.decrypt(run(ti.encrypt(b"paired")))) == b"paired"
    assert not r.complete  # the original is untouched by its forks
    with pytest.raises(HandshakeError, match="no PSK"):
        run(r.read_message(message))


def test_psk_cannot_change_after_it_was_used() -> None:
    i, r = new_pair("XXpsk3")
    run(exchange(i, r))
    with pytest.raises(HandshakeError):
        r.set_psk(os.urandom(32))


@pytest.mark.parametrize(
    ("pattern", "psk"), [("XX", b"\x00" * 32), ("XXpsk3", b"short"), ("IK", None)]
)
def test_bad_arguments_are_refused(pattern: str, psk: bytes | None) -> None:
    with pytest.raises(ValueError):
        HandshakeState(
            BACKEND, pattern=pattern, initiator=True, prologue=b"", static=new_keypair(), psk=psk
        )


# --- sizes and call order -------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_oversized_messages_are_refused(pattern: str) -> None:
    i, r = new_pair(pattern)
    with pytest.raises(HandshakeError):
        run(i.write_message(bytes(MAX_MESSAGE)))
    message = run(i.write_message(bytes(MAX_MESSAGE - 48)))  # the largest message 1 allowed
    assert len(message) <= MAX_MESSAGE
    with pytest.raises(HandshakeError, match="length"):
        run(r.fork().read_message(message + b"\x00" * (MAX_MESSAGE + 1 - len(message))))
    assert run(r.read_message(message)) == bytes(MAX_MESSAGE - 48)

    ti, tr = connected(pattern)
    with pytest.raises(NoiseError):
        run(ti.encrypt(bytes(MAX_PLAINTEXT + 1)))
    with pytest.raises(NoiseError):
        run(tr.decrypt(bytes(MAX_MESSAGE + 1)))
    assert run(tr.decrypt(run(ti.encrypt(bytes(MAX_PLAINTEXT))))) == bytes(MAX_PLAINTEXT)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_short_handshake_messages_are_refused(pattern: str) -> None:
    i, r = new_pair(pattern)
    message = run(i.write_message(b""))
    with pytest.raises(HandshakeError, match="length"):
        run(r.read_message(message[:31]))
    with pytest.raises(HandshakeError):  # a handshake that failed once is over
        run(r.read_message(message))
    i, r = new_pair(pattern)
    run(r.read_message(run(i.write_message(b""))))
    with pytest.raises(HandshakeError, match="length"):
        run(i.read_message(run(r.write_message(b""))[:95]))


def test_wrong_turn_calls_are_refused() -> None:
    i, r = new_pair("XX")
    with pytest.raises(HandshakeError):
        run(r.write_message(b""))
    with pytest.raises(HandshakeError):
        run(i.read_message(bytes(32)))
    with pytest.raises(HandshakeError):
        i.split()
    message = run(i.write_message(b""))
    with pytest.raises(HandshakeError):
        run(i.write_message(b""))
    with pytest.raises(HandshakeError):
        run(r.write_message(b""))  # hasn't read message 1 yet
    run(r.read_message(message))
    run(i.read_message(run(r.write_message(b""))))
    run(r.read_message(run(i.write_message(b""))))
    for side in (i, r):
        with pytest.raises(HandshakeError):
            run(side.write_message(b""))
        with pytest.raises(HandshakeError):
            run(side.read_message(message))


# --- cipher state ---------------------------------------------------------------------------


def test_nonce_space_ends_before_the_reserved_value() -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(BACKEND, key), CipherState(BACKEND, key)
    sender.n = receiver.n = MAX_NONCE - 1
    assert run(receiver.decrypt_with_ad(b"", run(sender.encrypt_with_ad(b"", b"last")))) == b"last"
    assert sender.n == receiver.n == MAX_NONCE
    with pytest.raises(NoiseError):
        run(sender.encrypt_with_ad(b"", b"one too many"))
    with pytest.raises(NoiseError):
        run(receiver.decrypt_with_ad(b"", bytes(20)))


def test_concurrent_encrypts_take_nonces_in_call_order() -> None:
    """Nonces are allocated before awaiting, so out-of-order completion keeps call order."""

    class SlowBackend:
        """This runtime's backend, but every await point stalls longer for earlier calls, so
        they complete in reverse."""

        calls = 0

        async def stall(self) -> None:
            self.calls += 1
            for _ in range(40 - self.calls):
                await asyncio.sleep(0)  # a bare yield to the event loop, not a timed sleep

        async def aead(self, key: bytes) -> Any:
            await self.stall()
            return SlowCipher(self, await BACKEND.aead(key))

    class SlowCipher:
        def __init__(self, backend: SlowBackend, inner: Any) -> None:
            self.backend = backend
            self.inner = inner

        async def encrypt(self, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
            await self.backend.stall()
            return await self.inner.encrypt(nonce, ad, plaintext)

    key = os.urandom(32)
    sender = CipherState(SlowBackend(), key)  # type: ignore[arg-type]
    receiver = CipherState(BACKEND, key)
    plaintexts = [b"m%d" % k for k in range(8)]

    async def go() -> list[bytes]:
        return await asyncio.gather(*(sender.encrypt_with_ad(b"", p) for p in plaintexts))

    messages = run(go())
    assert [run(receiver.decrypt_with_ad(b"", m)) for m in messages] == plaintexts


def test_cipher_state_without_key_passes_data_through() -> None:
    cs = CipherState(BACKEND)
    assert not cs.has_key
    assert run(cs.encrypt_with_ad(b"ad", b"data")) == b"data"
    assert run(cs.decrypt_with_ad(b"ad", b"data")) == b"data"
    assert cs.n == 0


# --- backend ---------------------------------------------------------------------------------


def test_backend_dh_agrees_and_refuses_bad_points_and_keys() -> None:
    a, b = new_keypair(), new_keypair()
    assert len(a.public) == 32 and a.public != b.public
    assert run(BACKEND.dh(a.private, b.public)) == run(BACKEND.dh(b.private, a.public))
    with pytest.raises(CryptoError):  # a low-order point: the all-zero shared secret
        run(BACKEND.dh(a.private, bytes(32)))
    with pytest.raises(CryptoError):
        run(BACKEND.dh(a.private, b"\x09" * 31))
    with pytest.raises(CryptoError):
        run(BACKEND.aead(b"\x00" * 16))


@cpython_only("raw private bytes exist only on the `cryptography` backend")
def test_cpython_backend_private_bytes_round_trip() -> None:
    kp = new_keypair()
    again = BACKEND.keypair_from_private_bytes(BACKEND.private_bytes(kp))
    assert again.public == kp.public
    other = new_keypair()
    assert run(BACKEND.dh(again.private, other.public)) == run(BACKEND.dh(other.private, kp.public))
    with pytest.raises(CryptoError):
        BACKEND.keypair_from_private_bytes(b"\x01" * 31)
    assert BACKEND.private_bytes(kp).hex() not in repr(kp)


# --- interop with the independent `noiseprotocol` package ----------------------------------------
# noiseprotocol 0.3.1 runs unmodified against cryptography 50 here; its write_message/read_message
# return bytearray and its encrypt/decrypt refuse anything but bytes, hence the bytes() calls.
# It needs `cryptography`, which has no Pyodide wheel: these cross-checks run on CPython only.
NOISEPROTOCOL = "the `noiseprotocol` cross-check needs `cryptography` (no Pyodide wheel)"


def their_side(
    pattern: str, *, initiator: bool, static: bytes, psk: bytes | None
) -> NoiseConnection:
    from noise.connection import Keypair, NoiseConnection

    conn = NoiseConnection.from_name(PROTOCOL_NAMES[pattern])
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(PROLOGUES[pattern])
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if psk is not None:
        conn.set_psks(psk=psk)
    conn.start_handshake()
    return conn


@cpython_only(NOISEPROTOCOL)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_interop_with_noiseprotocol(pattern: str, we_initiate: bool) -> None:
    psk = os.urandom(32) if pattern == "XXpsk3" else None
    ours_static, their_static = new_keypair(), os.urandom(32)
    ours = HandshakeState(
        BACKEND,
        pattern=pattern,
        initiator=we_initiate,
        prologue=PROLOGUES[pattern],
        static=ours_static,
        psk=psk,
    )
    theirs = their_side(pattern, initiator=not we_initiate, static=their_static, psk=psk)
    payloads = [b"", b'{"server": {"name": "kite", "version": "0.1"}}', b'{"name": "phone"}']
    for index, payload in enumerate(payloads):
        if (index % 2 == 0) == we_initiate:
            got = bytes(theirs.read_message(run(ours.write_message(payload))))
        else:
            got = run(ours.read_message(bytes(theirs.write_message(payload))))
        assert got == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.remote_static == BACKEND.keypair_from_private_bytes(their_static).public
    assert ours.handshake_hash == theirs.get_handshake_hash()

    transport = ours.split()
    for n in range(50):
        data = os.urandom(n * 97)
        assert theirs.decrypt(run(transport.encrypt(data))) == data
        assert run(transport.decrypt(theirs.encrypt(data[::-1]))) == data[::-1]


@cpython_only(NOISEPROTOCOL)
def test_interop_wrong_psk_fails_on_our_responder() -> None:
    ours = HandshakeState(
        BACKEND,
        pattern="XXpsk3",
        initiator=False,
        prologue=b"kite.v1.pair",
        static=new_keypair(),
        psk=b"\x01" * 32,
    )
    theirs = their_side("XXpsk3", initiator=True, static=os.urandom(32), psk=b"\x02" * 32)
    run(ours.read_message(bytes(theirs.write_message(b""))))
    theirs.read_message(run(ours.write_message(b"")))
    with pytest.raises(HandshakeError):
        run(ours.read_message(bytes(theirs.write_message(b""))))
