"""The crypto backend interface the Noise code is written against.

Noise needs X25519 and AES-256-GCM, which come from the `cryptography` package on CPython and from
WebCrypto under Pyodide. WebCrypto is asynchronous (JS promises) and keeps the device's static
private key as a non-extractable ``CryptoKey``, so every backend operation is ``async`` and private
keys are opaque handles that only the backend that made them understands. Hashing (SHA-256, HMAC,
HKDF) is not here: the standard library does it synchronously on both platforms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

DHLEN = 32
"""Length of an X25519 public key and of a DH output."""

KEYLEN = 32
"""Length of an AES-256-GCM key."""

TAGLEN = 16
"""Length of the AES-GCM authentication tag appended to every ciphertext."""


class CryptoError(Exception):
    """A cryptographic operation failed (bad key, low-order point, ...)."""


class DecryptError(CryptoError):
    """AEAD authentication failed: the ciphertext, nonce, key or associated data is wrong."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair whose private half is an opaque backend handle.

    Code outside the backend only ever reads ``public`` and hands ``private`` back to the backend
    that created it; under WebCrypto the private bytes are not reachable at all.
    """

    public: bytes
    private: Any = field(repr=False)


class AeadCipher(Protocol):
    """AES-256-GCM bound to one key; the 96-bit nonce is 4 zero bytes then ``nonce`` big-endian.

    This is the nonce layout the Noise spec fixes for AESGCM, so callers pass the counter only.
    """

    async def encrypt(self, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
        """Return ciphertext || 16-byte tag."""

    async def decrypt(self, nonce: int, ad: bytes, ciphertext: bytes) -> bytes:
        """Return the plaintext; raise `DecryptError` if authentication fails."""


class CryptoBackend(Protocol):
    """The platform primitives Noise needs: X25519 and an AES-256-GCM cipher factory."""

    async def generate_keypair(self) -> KeyPair:
        """Return a fresh random X25519 key pair."""

    async def dh(self, private: Any, public: bytes) -> bytes:
        """Return the 32-byte X25519 shared secret.

        Raise `CryptoError` for a malformed public key or an all-zero result (a low-order point),
        so a peer cannot force a known shared secret.
        """

    async def aead(self, key: bytes) -> AeadCipher:
        """Return an AES-256-GCM cipher keyed once with the 32-byte ``key``."""
