"""Published Noise test vectors for Noise_XX / Noise_XXpsk3 _25519_AESGCM_SHA256.

The vector file may not be committed here, so it is fetched at test time. No PyPI package
ships the cacophony or noise-c vectors (the noiseprotocol, dissononce and noiseframework sdists
lack them); the one registry package found that ships published vectors for both names is Debian's
``golang-github-flynn-noise-dev`` (flynn/noise, BSD-3-Clause), whose ``vectors.txt`` holds
``key=hex`` lines: fixed ephemeral and static private keys, optional prologue and PSK, then
``msg_N_payload`` / ``msg_N_ciphertext`` pairs, where messages 0-2 are the handshake and later
ones are transport messages, alternating from the initiator. It has no handshake hashes.

The file is cached as ``flynn-noise-vectors.txt`` in ``$KITE_TEST_DATA`` or
``~/.cache/kite-test-data/``; otherwise ``apt-get download`` fetches the package (this needs apt's
package lists: ``apt-get update`` once on a fresh machine). A failed download skips the test
locally and fails it in CI (``CI=true``).

Runtime-neutral: inside Pyodide (``tests/pyodide/run.mjs`` mounts the cache directory) the same
vectors run on the WebCrypto backend, whose keys are imported non-extractable. Pyodide cannot
run apt, so there a missing cache file is a skip: the CPython run is the one that fetches it.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from agent_core.channel.crypto import KeyPair
from agent_core.channel.noise import PROTOCOL_NAMES, HandshakeState
from agent_core.runtime import IS_PYODIDE
from tests.runtime_support import keypair_from_private_bytes, run
from tests.test_noise import BACKEND

DEBIAN_PACKAGE = "golang-github-flynn-noise-dev"
MEMBER_SUFFIX = "/github.com/flynn/noise/vectors.txt"
CACHE_NAME = "flynn-noise-vectors.txt"
HANDSHAKE_MESSAGES = 3

Vector = dict[str, str]


def cache_dir() -> Path:
    return Path(os.environ.get("KITE_TEST_DATA") or Path.home() / ".cache" / "kite-test-data")


def download_vectors() -> bytes:
    """Fetch the Debian package with apt and return its vectors.txt; raise OSError on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        fetch = subprocess.run(
            ["apt-get", "download", DEBIAN_PACKAGE],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        debs = list(Path(tmp).glob("*.deb"))
        if fetch.returncode != 0 or not debs:
            raise OSError(f"apt-get download {DEBIAN_PACKAGE} failed: {fetch.stderr.strip()}")
        unpack = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True, timeout=60
        )
        if unpack.returncode != 0:
            raise OSError(f"dpkg-deb failed: {unpack.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(unpack.stdout)) as tar:
        for member in tar:
            if member.name.endswith(MEMBER_SUFFIX):
                extracted = tar.extractfile(member)
                if extracted is not None:
                    return extracted.read()
    raise OSError(f"{DEBIAN_PACKAGE} has no {MEMBER_SUFFIX}")


def vector_text() -> str:
    """The vector file from the cache, downloading it once; skip (or fail in CI) if unavailable."""
    cached = cache_dir() / CACHE_NAME
    if not cached.is_file() and IS_PYODIDE:
        pytest.skip(f"{cached} is not there: the CPython run of this test fetches it")
    if not cached.is_file():
        try:
            data = download_vectors()
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"Noise test vectors unavailable ({exc}); put {CACHE_NAME} in {cache_dir()}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(data)
        partial.replace(cached)
    return cached.read_text("ascii")


def parse(text: str) -> list[Vector]:
    """Split the file into one dict per ``handshake=`` block."""
    vectors: list[Vector] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if key == "handshake":
            vectors.append({})
        vectors[-1][key] = value
    return vectors


@pytest.fixture(scope="module")
def all_vectors() -> list[Vector]:
    return parse(vector_text())


def check_vector(vector: Vector, pattern: str) -> int:
    """Replay one vector through our initiator and responder; return how many messages matched."""

    prologue = bytes.fromhex(vector.get("prologue", ""))
    psk = bytes.fromhex(vector["preshared_key"]) if "preshared_key" in vector else None

    def keypair(name: str) -> KeyPair:
        return run(keypair_from_private_bytes(BACKEND, bytes.fromhex(vector[name])))

    def side(initiator: bool) -> HandshakeState:
        who = "init" if initiator else "resp"
        return HandshakeState(
            BACKEND,
            pattern=pattern,
            initiator=initiator,
            prologue=prologue,
            static=keypair(f"{who}_static"),
            psk=psk,
            ephemeral=keypair(f"gen_{who}_ephemeral"),
        )

    i, r = side(True), side(False)
    transports = None
    index = 0
    while f"msg_{index}_ciphertext" in vector:
        payload = bytes.fromhex(vector[f"msg_{index}_payload"])
        expected = vector[f"msg_{index}_ciphertext"]
        # The handshake and the transport messages each start with the initiator and alternate.
        step = index if index < HANDSHAKE_MESSAGES else index - HANDSHAKE_MESSAGES
        from_initiator = step % 2 == 0
        if index < HANDSHAKE_MESSAGES:
            writer, reader = (i, r) if from_initiator else (r, i)
            message = run(writer.write_message(payload))
            assert message.hex() == expected, f"handshake message {index}"
            assert run(reader.read_message(message)) == payload
        else:
            if transports is None:
                assert i.complete and r.complete
                assert i.handshake_hash == r.handshake_hash
                transports = i.split(), r.split()
            sender, receiver = transports if from_initiator else transports[::-1]
            message = run(sender.encrypt(payload))
            assert message.hex() == expected, f"transport message {index}"
            assert run(receiver.decrypt(message)) == payload
        index += 1
    return index


@pytest.mark.parametrize("pattern", sorted(PROTOCOL_NAMES))
def test_published_vectors(pattern: str, all_vectors: list[Vector]) -> None:
    name = PROTOCOL_NAMES[pattern].decode()
    ours = [v for v in all_vectors if v["handshake"] == name]
    assert ours, f"no vectors for {name} in the vector file"
    for number, vector in enumerate(ours):
        messages = check_vector(vector, pattern)
        assert messages > HANDSHAKE_MESSAGES, f"vector {number} has no transport messages"
