"""The WebCrypto backend against fixed answers: RFC 7748's X25519 vector, an AES-GCM ciphertext
computed by `cryptography` on CPython, Noise's nonce layout, and key non-extractability.

Runs only inside Pyodide (``tests/pyodide/run.mjs``); on CPython every test here is skipped.
The Noise tests (test_noise*.py) run on this backend there as well; these pin its primitives.
"""

from __future__ import annotations

import pytest

from agent_core.channel.crypto import CryptoError, DecryptError
from agent_core.runtime import IS_PYODIDE, default_crypto_backend
from tests.runtime_support import run

if not IS_PYODIDE:
    pytest.skip(
        "the WebCrypto backend: runs inside Pyodide (tests/pyodide)", allow_module_level=True
    )

# RFC 7748, section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# AESGCM(bytes(range(32))).encrypt(b"\0" * 4 + (2**40 + 7).to_bytes(8, "big"), PLAINTEXT, b"kite")
# from `cryptography` on CPython: ciphertext || 16-byte tag.
AES_KEY = bytes(range(32))
AES_NONCE = 2**40 + 7
AES_PLAINTEXT = b"one suite, two runtimes"
AES_CIPHERTEXT = bytes.fromhex(
    "946adee3beff9fdd0eeda8104e2f4bf32d4b8077b4df0ba7d27f757d2b3c1ab91abb422716eaa0"
)

LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.fixture(scope="module")
def backend():  # -> WebCryptoBackend (only importable under Pyodide)
    from agent_core.channel.crypto_webcrypto import WebCryptoBackend

    be = default_crypto_backend()
    assert isinstance(be, WebCryptoBackend)
    return be


def test_x25519_matches_rfc7748(backend) -> None:
    alice = run(backend.import_private_key(ALICE_PRIVATE))
    bob = run(backend.import_private_key(BOB_PRIVATE))
    assert alice.public == ALICE_PUBLIC and bob.public == BOB_PUBLIC
    assert run(backend.dh(alice.private, BOB_PUBLIC)) == SHARED
    assert run(backend.dh(bob.private, ALICE_PUBLIC)) == SHARED


def test_generated_keys_are_non_extractable(backend) -> None:
    from js import crypto
    from pyodide.ffi import JsException

    kp = run(backend.generate_keypair())
    assert kp.private.extractable is False
    assert kp.private.type == "private" and kp.private.algorithm.name == "X25519"
    assert list(kp.private.usages) == ["deriveBits"]
    for fmt in ("pkcs8", "jwk", "raw"):
        with pytest.raises(JsException):
            run(crypto.subtle.exportKey(fmt, kp.private))
    assert len(kp.public) == 32
    assert run(backend.import_private_key(ALICE_PRIVATE)).private.extractable is False


def test_stored_crypto_key_pair_round_trips(backend) -> None:
    """A CryptoKeyPair as IndexedDB would hand it back becomes the same `KeyPair`."""
    from js import Object, crypto
    from pyodide.ffi import to_js

    algorithm = to_js({"name": "X25519"}, dict_converter=Object.fromEntries)
    pair = run(crypto.subtle.generateKey(algorithm, False, to_js(["deriveBits"])))
    kp = run(backend.keypair_from_crypto_keys(pair.privateKey, pair.publicKey))
    other = run(backend.generate_keypair())
    assert run(backend.dh(kp.private, other.public)) == run(backend.dh(other.private, kp.public))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=["zero", "one", "order8", "p-1"])
def test_low_order_points_are_refused(backend, point: bytes) -> None:
    kp = run(backend.generate_keypair())
    with pytest.raises(CryptoError):
        run(backend.dh(kp.private, point))


def test_malformed_keys_are_refused(backend) -> None:
    kp = run(backend.generate_keypair())
    for bad in (b"", b"\x09" * 31, b"\x09" * 33):
        with pytest.raises(CryptoError):
            run(backend.dh(kp.private, bad))
    with pytest.raises(CryptoError):
        run(backend.import_private_key(b"\x01" * 31))
    for key in (b"", bytes(16), bytes(33)):
        with pytest.raises(CryptoError):
            run(backend.aead(key))


def test_aes_gcm_matches_cpython_and_noise_nonce_layout(backend) -> None:
    cipher = run(backend.aead(AES_KEY))
    assert run(cipher.encrypt(AES_NONCE, b"kite", AES_PLAINTEXT)) == AES_CIPHERTEXT
    assert run(cipher.decrypt(AES_NONCE, b"kite", AES_CIPHERTEXT)) == AES_PLAINTEXT
    assert len(run(cipher.encrypt(0, b"", b""))) == 16  # an empty plaintext is just the tag


@pytest.mark.parametrize(
    ("nonce", "ad", "ciphertext"),
    [
        (AES_NONCE + 1, b"kite", AES_CIPHERTEXT),
        (AES_NONCE ^ (1 << 63), b"kite", AES_CIPHERTEXT),
        (AES_NONCE, b"kitf", AES_CIPHERTEXT),
        (AES_NONCE, b"kite", bytes([AES_CIPHERTEXT[0] ^ 1]) + AES_CIPHERTEXT[1:]),
        (AES_NONCE, b"kite", AES_CIPHERTEXT[:-1] + bytes([AES_CIPHERTEXT[-1] ^ 0x80])),
        (AES_NONCE, b"kite", AES_CIPHERTEXT[:-1]),
        (AES_NONCE, b"kite", AES_CIPHERTEXT[:15]),
        (AES_NONCE, b"kite", b""),
    ],
    ids=["nonce", "nonce-high-bit", "ad", "body", "tag", "truncated", "shorter-than-tag", "empty"],
)
def test_aes_gcm_refuses_anything_altered(backend, nonce: int, ad: bytes, ciphertext: bytes):
    cipher = run(backend.aead(AES_KEY))
    with pytest.raises(DecryptError):
        run(cipher.decrypt(nonce, ad, ciphertext))
