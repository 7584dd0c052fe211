"""The Noise Protocol Framework (revision 34), sans-I/O, for exactly the two handshakes Kite uses.

- ``XX``:     ``Noise_XX_25519_AESGCM_SHA256``      (a paired device connects)
- ``XXpsk3``: ``Noise_XXpsk3_25519_AESGCM_SHA256``  (a new device pairs with a one-time secret)

Objects here are fed bytes and return bytes; moving them is the caller's job. X25519 and AES-GCM go
through an async `CryptoBackend` (WebCrypto under Pyodide is promise-based and never reveals the
device's private key); SHA-256, HMAC and HKDF run synchronously on the standard library.

Errors: everything that goes wrong in a handshake raises `HandshakeError` (a failed AEAD check or
a low-order DH point arrives as its ``__cause__``); once processing a message has failed, the
handshake refuses further use (out-of-turn calls and oversized payloads are refused harmlessly).
After the handshake, `Transport.decrypt` raises `DecryptError` (from ``crypto``) when a message
does not authenticate, and `NoiseError` for an oversized message or an exhausted nonce. Any of
these means the channel must be closed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Coroutine
from typing import Any

from .crypto import DHLEN, TAGLEN, AeadCipher, CryptoBackend, CryptoError, KeyPair

MAX_MESSAGE = 65535
"""Largest Noise message, handshake or transport, in bytes."""

MAX_PLAINTEXT = MAX_MESSAGE - TAGLEN
"""Largest plaintext one transport message can carry."""

MAX_NONCE = 2**64 - 1
"""Reserved nonce value: a cipher state that reaches it refuses to encrypt or decrypt."""

HASHLEN = 32
"""SHA-256 output length; it equals the AES-256 key length, so HKDF outputs need no truncation."""

PSKLEN = 32

PROTOCOL_NAMES: dict[str, bytes] = {
    "XX": b"Noise_XX_25519_AESGCM_SHA256",
    "XXpsk3": b"Noise_XXpsk3_25519_AESGCM_SHA256",
}

_XX = (("e",), ("e", "ee", "s", "es"), ("s", "se"))
_PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "XX": _XX,
    "XXpsk3": (*_XX[:2], (*_XX[2], "psk")),
}


def _overheads(messages: tuple[tuple[str, ...], ...], psk: bool) -> tuple[int, ...]:
    """Bytes each handshake message adds to its payload, so lengths are checked before any work."""
    result = []
    has_key = False
    for tokens in messages:
        size = 0
        for token in tokens:
            if token == "e":
                size += DHLEN
                has_key = has_key or psk  # the psk modifier mixes e into the key
            elif token == "s":
                size += DHLEN + (TAGLEN if has_key else 0)
            else:  # ee, es, se, psk all call MixKey
                has_key = True
        result.append(size + (TAGLEN if has_key else 0))
    return tuple(result)


_OVERHEADS = {name: _overheads(msgs, "psk" in name) for name, msgs in _PATTERNS.items()}


class NoiseError(Exception):
    """The Noise layer refused an operation; the channel must be closed."""


class HandshakeError(NoiseError):
    """The handshake failed or was driven out of turn."""


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """HKDF with HMAC-SHA256, two outputs, as the Noise spec defines it."""
    temp_key = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp_key, b"\x01", "sha256")
    return out1, hmac.digest(temp_key, out1 + b"\x02", "sha256")


def _hkdf3(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    """HKDF with three outputs, for MixKeyAndHash."""
    temp_key = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp_key, b"\x01", "sha256")
    out2 = hmac.digest(temp_key, out1 + b"\x02", "sha256")
    return out1, out2, hmac.digest(temp_key, out2 + b"\x03", "sha256")


class CipherState:
    """A key and a nonce counter (Noise section 5.1).

    The nonce is taken and advanced synchronously before the backend is awaited, so concurrent
    calls get nonces in call order; the caller must then put the messages on the wire in that order.
    """

    __slots__ = ("_aead", "_backend", "_key", "n")

    def __init__(self, backend: CryptoBackend, key: bytes | None = None) -> None:
        self._backend = backend
        self._key = key
        self._aead: AeadCipher | None = None
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def initialize_key(self, key: bytes) -> None:
        self._key = key
        self._aead = None
        self.n = 0

    def copy(self) -> CipherState:
        clone = CipherState(self._backend, self._key)
        clone._aead = self._aead  # stateless once keyed, so safe to share
        clone.n = self.n
        return clone

    def _take_nonce(self) -> int:
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce space exhausted; the channel must be re-established")
        self.n = n + 1
        return n

    async def _cipher(self, key: bytes) -> AeadCipher:
        # Keyed lazily because making a cipher is async (WebCrypto importKey) and MixKey is not.
        self._aead = await self._backend.aead(key)
        return self._aead

    async def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt under the next nonce; without a key the plaintext passes through (spec)."""
        key = self._key
        if key is None:
            return plaintext
        n = self._take_nonce()
        aead = self._aead or await self._cipher(key)
        return await aead.encrypt(n, ad, plaintext)

    @property
    def can_sync(self) -> bool:
        """Whether the backend offers synchronous AEAD (CPython yes, WebCrypto no)."""
        return self._key is not None and hasattr(self._backend, "aead_sync")

    def _cipher_sync(self, key: bytes) -> Any:
        self._aead = self._backend.aead_sync(key)  # type: ignore[attr-defined]
        return self._aead

    def encrypt_sync(self, ad: bytes, plaintext: bytes | memoryview) -> bytes:
        """`encrypt_with_ad` without awaiting; only when `can_sync` (keyed, sync backend)."""
        n = self._take_nonce()
        aead: Any = self._aead or self._cipher_sync(self._key)  # type: ignore[arg-type]
        return aead.encrypt_sync(n, ad, plaintext)

    def decrypt_sync(self, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        """`decrypt_with_ad` without awaiting; the nonce is not advanced on failure."""
        n = self._take_nonce()
        aead: Any = self._aead or self._cipher_sync(self._key)  # type: ignore[arg-type]
        try:
            return aead.decrypt_sync(n, ad, ciphertext)
        except CryptoError:
            self.n = n
            raise

    async def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt under the next nonce; raises `DecryptError`, and then ``n`` is not advanced.

        The rollback holds for sequential use; with concurrent decrypts in flight a failure leaves
        later nonces taken, which does not matter because a failed decrypt ends the channel.
        """
        key = self._key
        if key is None:
            return ciphertext
        n = self._take_nonce()
        aead = self._aead or await self._cipher(key)
        try:
            return await aead.decrypt(n, ad, ciphertext)
        except CryptoError:
            if self.n == n + 1:
                self.n = n
            raise


class SymmetricState:
    """Chaining key, handshake hash and the current cipher state (Noise section 5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, backend: CryptoBackend, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState(backend)

    def copy(self) -> SymmetricState:
        clone = object.__new__(SymmetricState)
        clone.ck, clone.h, clone.cipher = self.ck, self.h, self.cipher.copy()
        return clone

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm)
        self.cipher.initialize_key(temp_k)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf3(self.ck, ikm)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k)

    async def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = await self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    async def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = await self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self, backend: CryptoBackend) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf(self.ck, b"")
        return CipherState(backend, k1), CipherState(backend, k2)


class Transport:
    """The two cipher states after the handshake, oriented for one side; ``ad`` is always empty."""

    __slots__ = ("_recv", "_send", "handshake_hash", "sync")

    def __init__(self, send: CipherState, recv: CipherState, handshake_hash: bytes) -> None:
        self._send = send
        self._recv = recv
        self.handshake_hash = handshake_hash
        """Identical on both sides for one session: usable as a channel binding."""
        self.sync = send.can_sync and recv.can_sync
        """True when `encrypt_sync`/`decrypt_sync` may be used (a synchronous crypto backend)."""

    def encrypt_sync(self, plaintext: bytes | memoryview) -> bytes:
        """`encrypt` without the coroutine layers, for a `sync` transport (the hot path)."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise NoiseError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        return self._send.encrypt_sync(b"", plaintext)

    def decrypt_sync(self, message: bytes | memoryview) -> bytes:
        """`decrypt` without the coroutine layers, for a `sync` transport."""
        if len(message) > MAX_MESSAGE:
            raise NoiseError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        return self._recv.decrypt_sync(b"", message)

    async def encrypt(self, plaintext: bytes) -> bytes:
        """Return one transport message; refuse plaintext over `MAX_PLAINTEXT` with `NoiseError`."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise NoiseError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        return await self._send.encrypt_with_ad(b"", plaintext)

    async def decrypt(self, message: bytes) -> bytes:
        """Return the plaintext; `DecryptError` if the message was forged, replayed or reordered."""
        if len(message) > MAX_MESSAGE:
            raise NoiseError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        return await self._recv.decrypt_with_ad(b"", message)


class HandshakeState:
    """One side of an XX or XXpsk3 handshake (Noise section 5.3).

    XX is ``-> e``, ``<- e, ee, s, es``, ``-> s, se``; XXpsk3 appends ``psk`` to the third message
    and, as the psk modifier requires, also mixes every ephemeral public key into the key.
    """

    def __init__(
        self,
        backend: CryptoBackend,
        *,
        pattern: str,
        initiator: bool,
        prologue: bytes,
        static: KeyPair,
        psk: bytes | None = None,
        ephemeral: KeyPair | None = None,
    ) -> None:
        """Start a handshake; ``ephemeral`` is for test vectors only, real use must omit it.

        For XXpsk3 the PSK may be given later with `set_psk` (a server learns which pairing
        secret applies only by trying them on message 3).
        """
        if pattern not in _PATTERNS:
            raise ValueError(f"unsupported handshake pattern {pattern!r}")
        self._backend = backend
        self._messages = _PATTERNS[pattern]
        self._overheads = _OVERHEADS[pattern]
        self._uses_psk = "psk" in pattern
        self._initiator = initiator
        self._s = static
        self._e = ephemeral
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._psk: bytes | None = None
        self._index = 0  # next message of the pattern to write or read
        self._busy = False
        self._failed = False
        if psk is not None:
            self.set_psk(psk)
        self._ss = SymmetricState(backend, PROTOCOL_NAMES[pattern])
        self._ss.mix_hash(prologue)

    @property
    def complete(self) -> bool:
        """True once the last handshake message was written or read; then call `split`."""
        return self._index == len(self._messages) and not self._failed

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once its ``s`` token has been read."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    def set_psk(self, psk: bytes) -> None:
        """Set or replace the 32-byte PSK; allowed until the ``psk`` token is processed."""
        if not self._uses_psk:
            raise ValueError("this handshake pattern takes no PSK")
        if len(psk) != PSKLEN:
            raise ValueError(f"PSK must be {PSKLEN} bytes, got {len(psk)}")
        if self._index == len(self._messages) or self._busy:
            raise HandshakeError("the PSK can no longer be changed")
        self._psk = bytes(psk)

    def fork(self) -> HandshakeState:
        """Return an independent copy, so a server can try one candidate PSK per copy."""
        if self._busy:
            raise HandshakeError("cannot fork while a message is being processed")
        clone = object.__new__(HandshakeState)
        clone.__dict__.update(self.__dict__)
        clone._ss = self._ss.copy()
        return clone

    def split(self) -> Transport:
        """Return the transport cipher states, (send, recv) for this side."""
        if not self.complete or self._busy:
            raise HandshakeError("handshake is not complete")
        c1, c2 = self._ss.split(self._backend)
        send, recv = (c1, c2) if self._initiator else (c2, c1)
        return Transport(send, recv, self._ss.h)

    def _next_tokens(self, writing: bool) -> tuple[str, ...]:
        """Return the next message's tokens, refusing out-of-turn, concurrent or late calls."""
        if self._failed:
            raise HandshakeError("handshake already failed")
        if self._busy:
            raise HandshakeError("another handshake message is being processed")
        if self._index == len(self._messages):
            raise HandshakeError("handshake already complete")
        if writing != (self._initiator == (self._index % 2 == 0)):
            raise HandshakeError("not this side's turn to " + ("write" if writing else "read"))
        return self._messages[self._index]

    async def write_message(self, payload: bytes) -> bytes:
        """Return the next handshake message carrying ``payload``."""
        tokens = self._next_tokens(writing=True)
        if len(payload) + self._overheads[self._index] > MAX_MESSAGE:
            raise HandshakeError(f"payload of {len(payload)} bytes is too large")
        return await self._step(self._write(tokens, payload))

    async def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message and return its payload."""
        tokens = self._next_tokens(writing=False)
        return await self._step(self._read(tokens, bytes(message)))

    async def _step(self, work: Coroutine[Any, Any, bytes]) -> bytes:
        """Run one message's work; any failure poisons the state, since it is half-updated."""
        self._busy = True
        try:
            result = await work
        except CryptoError as exc:
            self._failed = True
            raise HandshakeError(f"handshake failed: {exc}") from exc
        except BaseException:
            self._failed = True
            raise
        finally:
            self._busy = False
        self._index += 1
        return result

    async def _write(self, tokens: tuple[str, ...], payload: bytes) -> bytes:
        ss = self._ss
        out = bytearray()
        for token in tokens:
            if token == "e":
                if self._e is None:
                    self._e = await self._backend.generate_keypair()
                out += self._e.public
                ss.mix_hash(self._e.public)
                if self._uses_psk:
                    ss.mix_key(self._e.public)
            elif token == "s":
                out += await ss.encrypt_and_hash(self._s.public)
            else:
                await self._mix_token(token)
        out += await ss.encrypt_and_hash(payload)
        return bytes(out)

    async def _read(self, tokens: tuple[str, ...], message: bytes) -> bytes:
        if not self._overheads[self._index] <= len(message) <= MAX_MESSAGE:
            raise HandshakeError(f"handshake message of {len(message)} bytes has a wrong length")
        ss = self._ss
        pos = 0
        for token in tokens:
            if token == "e":
                self._re = message[pos : pos + DHLEN]
                pos += DHLEN
                ss.mix_hash(self._re)
                if self._uses_psk:
                    ss.mix_key(self._re)
            elif token == "s":
                end = pos + DHLEN + (TAGLEN if ss.cipher.has_key else 0)
                self._rs = await ss.decrypt_and_hash(message[pos:end])
                pos = end
            else:
                await self._mix_token(token)
        return await ss.decrypt_and_hash(message[pos:])

    async def _mix_token(self, token: str) -> None:
        """Process a DH or psk token, the same for writing and reading."""
        if token == "psk":
            if self._psk is None:
                raise HandshakeError("no PSK set for the psk token")
            self._ss.mix_key_and_hash(self._psk)
            return
        if token == "ee":
            mine, theirs = self._e, self._re
        elif (token == "es") == self._initiator:  # the initiator's es, the responder's se
            mine, theirs = self._e, self._rs
        else:  # the initiator's se, the responder's es
            mine, theirs = self._s, self._re
        assert mine is not None and theirs is not None, "the XX patterns send keys before use"
        self._ss.mix_key(await self._backend.dh(mine.private, theirs))
