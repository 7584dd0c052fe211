"""The crypto backend on CPython, over the `cryptography` package.

Only imported on CPython (the bridge, and agent_core's tests); Pyodide uses a WebCrypto backend.
The methods are ``async`` to match that backend, though nothing here ever waits.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .crypto import DHLEN, KEYLEN, CryptoError, DecryptError, KeyPair

_NONCE = struct.Struct(">4xQ")
"""Noise's AESGCM nonce: 32 zero bits, then the 64-bit counter big-endian."""


class _AesGcmCipher:
    """AES-256-GCM with one key; keeps the bound methods so the hot path does no lookups."""

    __slots__ = ("_decrypt", "_encrypt")

    def __init__(self, key: bytes) -> None:
        aesgcm = AESGCM(key)
        self._encrypt = aesgcm.encrypt
        self._decrypt = aesgcm.decrypt

    async def encrypt(self, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
        return self._encrypt(_NONCE.pack(nonce), plaintext, ad)

    async def decrypt(self, nonce: int, ad: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._decrypt(_NONCE.pack(nonce), ciphertext, ad)
        except InvalidTag:
            raise DecryptError("AES-GCM authentication failed") from None

    # Synchronous twins: nothing here waits, so the transport's hot path can skip the
    # coroutine layers (a few µs per message). Optional: WebCrypto backends lack them.

    def encrypt_sync(self, nonce: int, ad: bytes, plaintext: bytes | memoryview) -> bytes:
        return self._encrypt(_NONCE.pack(nonce), plaintext, ad)

    def decrypt_sync(self, nonce: int, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        try:
            return self._decrypt(_NONCE.pack(nonce), ciphertext, ad)
        except InvalidTag:
            raise DecryptError("AES-GCM authentication failed") from None


class CpythonCryptoBackend:
    """`CryptoBackend` on `cryptography`: private handles are ``X25519PrivateKey`` objects."""

    async def generate_keypair(self) -> KeyPair:
        return _keypair(X25519PrivateKey.generate())

    def keypair_from_private_bytes(self, raw: bytes) -> KeyPair:
        """Rebuild a key pair from its 32 raw private bytes (a stored host key, a test vector)."""
        if len(raw) != DHLEN:
            raise CryptoError(f"X25519 private key must be {DHLEN} bytes, got {len(raw)}")
        return _keypair(X25519PrivateKey.from_private_bytes(bytes(raw)))

    def private_bytes(self, kp: KeyPair) -> bytes:
        """Return the 32 raw private bytes, for storing the host key on disk."""
        return kp.private.private_bytes_raw()

    async def dh(self, private: X25519PrivateKey, public: bytes) -> bytes:
        try:
            return private.exchange(X25519PublicKey.from_public_bytes(bytes(public)))
        except ValueError as exc:
            # cryptography raises ValueError both for a malformed key and for an all-zero
            # shared secret (a low-order point), which is exactly what we must refuse.
            raise CryptoError(f"X25519 failed: {exc}") from None

    async def aead(self, key: bytes) -> _AesGcmCipher:
        return self.aead_sync(key)

    def aead_sync(self, key: bytes) -> _AesGcmCipher:
        """`aead` without the coroutine: lets `noise.Transport` offer synchronous calls."""
        if len(key) != KEYLEN:
            raise CryptoError(f"AES-256-GCM key must be {KEYLEN} bytes, got {len(key)}")
        return _AesGcmCipher(key)


def _keypair(private: X25519PrivateKey) -> KeyPair:
    return KeyPair(public=private.public_key().public_bytes_raw(), private=private)
