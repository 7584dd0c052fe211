"""The crypto backend under Pyodide, over WebCrypto (``crypto.subtle``) in the browser or Node.

Only imported under Pyodide: it needs the ``js`` module. X25519 keys are generated
non-extractable, so a device's static private key never exists as bytes in Python or in JS (it
can still be stored in IndexedDB as a ``CryptoKey``); public keys are exported raw. AES-256-GCM
keys are imported once per Noise cipher state; WebCrypto's AES-GCM output is ciphertext || tag,
exactly Noise's layout, and the 12-byte IV is Noise's: 4 zero bytes, then the counter big-endian.

WebCrypto reports every failure as a rejected promise carrying a ``DOMException``; they are mapped
to `DecryptError` (authentication failed) or `CryptoError` (anything else), as the interface asks.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

from js import Object, Uint8Array, crypto
from pyodide.ffi import JsException, JsProxy, to_js

from .crypto import DHLEN, KEYLEN, TAGLEN, CryptoError, DecryptError, KeyPair

_NONCE = struct.Struct(">4xQ")
"""Noise's AESGCM nonce: 32 zero bits, then the 64-bit counter big-endian."""

_ZERO = bytes(DHLEN)
_BASEPOINT = (9).to_bytes(DHLEN, "little")
"""X25519's base point u = 9: DH with it yields a private key's public key."""

_PKCS8_X25519 = bytes.fromhex("302e020100300506032b656e04220420")
"""DER prefix of a PKCS#8 X25519 private key (RFC 8410): followed by the 32 raw bytes."""

_SUBTLE = crypto.subtle
_X25519 = to_js({"name": "X25519"}, dict_converter=Object.fromEntries)
_AES_GCM = "AES-GCM"
_DERIVE = to_js(["deriveBits"])
_ENCRYPT_DECRYPT = to_js(["encrypt", "decrypt"])
_NO_USAGES = to_js([])
_EMPTY = Uint8Array.new(0)


def _u8(data: bytes) -> JsProxy:
    """Copy bytes into a fresh JS ``Uint8Array`` (WebCrypto copies its inputs again on call)."""
    array = Uint8Array.new(len(data))
    array.assign(data)
    return array


def _params(**fields: Any) -> JsProxy:
    return to_js(fields, dict_converter=Object.fromEntries)


def _error_name(exc: JsException) -> str:
    return str(getattr(exc, "name", "") or type(exc).__name__)


class _WebCryptoAesGcm:
    """AES-256-GCM bound to one imported, non-extractable ``CryptoKey``.

    Each FFI call costs tens of microseconds, so the algorithm object is made once per cipher and
    only its ``iv`` and ``additionalData`` are replaced per call. That is safe with calls in
    flight: WebCrypto copies the parameters before ``encrypt``/``decrypt`` return their promise,
    and the arrays replaced are fresh ones, never written to again.
    """

    __slots__ = ("_key", "_params")

    def __init__(self, key: JsProxy) -> None:
        self._key = key
        self._params = Object.new()
        self._params.name = _AES_GCM

    def _with(self, nonce: int, ad: bytes) -> JsProxy:
        params = self._params
        params.iv = _u8(_NONCE.pack(nonce))
        params.additionalData = _u8(ad) if ad else _EMPTY
        return params

    async def encrypt(self, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
        try:
            result = await _SUBTLE.encrypt(self._with(nonce, ad), self._key, _u8(plaintext))
        except JsException as exc:
            raise CryptoError(f"AES-GCM encrypt failed: {_error_name(exc)}") from None
        return result.to_bytes()

    async def decrypt(self, nonce: int, ad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < TAGLEN:  # WebCrypto would reject it too; skip the round trip
            raise DecryptError("AES-GCM ciphertext shorter than its tag")
        try:
            result = await _SUBTLE.decrypt(self._with(nonce, ad), self._key, _u8(ciphertext))
        except JsException as exc:
            if _error_name(exc) == "OperationError":
                raise DecryptError("AES-GCM authentication failed") from None
            raise CryptoError(f"AES-GCM decrypt failed: {_error_name(exc)}") from None
        return result.to_bytes()


class WebCryptoBackend:
    """`CryptoBackend` on WebCrypto: private handles are non-extractable X25519 ``CryptoKey``s."""

    async def generate_keypair(self) -> KeyPair:
        try:
            pair = await _SUBTLE.generateKey(_X25519, False, _DERIVE)
        except JsException as exc:
            raise CryptoError(f"X25519 key generation failed: {_error_name(exc)}") from None
        return await self.keypair_from_crypto_keys(pair.privateKey, pair.publicKey)

    async def keypair_from_crypto_keys(self, private_key: JsProxy, public_key: JsProxy) -> KeyPair:
        """Wrap a stored ``CryptoKeyPair`` (say, from IndexedDB) as a `KeyPair`."""
        try:
            raw = await _SUBTLE.exportKey("raw", public_key)
        except JsException as exc:
            raise CryptoError(f"X25519 public key export failed: {_error_name(exc)}") from None
        return KeyPair(public=raw.to_bytes(), private=private_key)

    async def import_private_key(self, raw: bytes) -> KeyPair:
        """Import 32 raw private bytes as a non-extractable key (for test vectors only).

        WebCrypto cannot export a non-extractable key's public half, so it is computed as
        X25519(private, 9).
        """
        if len(raw) != DHLEN:
            raise CryptoError(f"X25519 private key must be {DHLEN} bytes, got {len(raw)}")
        try:
            private = await _SUBTLE.importKey(
                "pkcs8", _u8(_PKCS8_X25519 + bytes(raw)), _X25519, False, _DERIVE
            )
        except JsException as exc:
            raise CryptoError(f"X25519 private key import failed: {_error_name(exc)}") from None
        return KeyPair(public=await self.dh(private, _BASEPOINT), private=private)

    async def dh(self, private: JsProxy, public: bytes) -> bytes:
        if len(public) != DHLEN:
            raise CryptoError(f"X25519 public key must be {DHLEN} bytes, got {len(public)}")
        try:
            peer = await _SUBTLE.importKey("raw", _u8(public), _X25519, True, _NO_USAGES)
            bits = await _SUBTLE.deriveBits(_params(name="X25519", public=peer), private, 256)
        except JsException as exc:
            # Browsers reject a low-order point's all-zero result here with OperationError.
            raise CryptoError(f"X25519 failed: {_error_name(exc)}") from None
        secret = bits.to_bytes()
        if hmac.compare_digest(secret, _ZERO):
            raise CryptoError("X25519 produced the all-zero shared secret (a low-order point)")
        return secret

    async def aead(self, key: bytes) -> _WebCryptoAesGcm:
        if len(key) != KEYLEN:
            raise CryptoError(f"AES-256-GCM key must be {KEYLEN} bytes, got {len(key)}")
        try:
            handle = await _SUBTLE.importKey("raw", _u8(key), _AES_GCM, False, _ENCRYPT_DECRYPT)
        except JsException as exc:
            raise CryptoError(f"AES-GCM key import failed: {_error_name(exc)}") from None
        return _WebCryptoAesGcm(handle)
