"""Kite's use of Noise: prologues, handshake payloads and the pinned-key checks, sans-I/O.

Two modes share one flow (initiator = client):

* connect — `Noise_XX_25519_AESGCM_SHA256`, prologue `kite.v1`, subprotocol `kite.v1`;
* pair    — `Noise_XXpsk3_25519_AESGCM_SHA256`, prologue `kite.v1.pair`, PSK = pairing secret.

Message 1 has an empty payload; message 2 carries `{"server": {...}}`; message 3 carries the
client's JSON (`{"name": ...}` when pairing). The client refuses a server whose static key is not
the pinned host key before it sends message 3, so a wrong host never learns the client's identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent_core.channel.crypto import CryptoBackend, CryptoError, KeyPair
from agent_core.channel.noise import HandshakeState, NoiseError, Transport

SUBPROTOCOL_CONNECT = "kite.v1"
SUBPROTOCOL_PAIR = "kite.v1.pair"
PROLOGUE = {SUBPROTOCOL_CONNECT: b"kite.v1", SUBPROTOCOL_PAIR: b"kite.v1.pair"}
PATTERN = {SUBPROTOCOL_CONNECT: "XX", SUBPROTOCOL_PAIR: "XXpsk3"}
MAX_PAYLOAD_JSON = 8192
# Message 1 is the ephemeral key and an empty payload; with a PSK the payload is encrypted
# (psk modifier: `e` also mixes the key), adding a 16-byte tag.
MSG1_SIZE = {SUBPROTOCOL_CONNECT: 32, SUBPROTOCOL_PAIR: 48}


class HandshakeRefused(NoiseError):
    """The peer is not who it must be (wrong host key, unknown device, bad pairing secret)."""


class HostKeyMismatch(HandshakeRefused):
    """The server's static key is not the pinned host key."""


def _payload(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _parse_payload(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_PAYLOAD_JSON:
        raise HandshakeRefused(f"{what} payload too large")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HandshakeRefused(f"{what} payload is not UTF-8 JSON") from exc
    if not isinstance(obj, dict):
        raise HandshakeRefused(f"{what} payload is not a JSON object")
    return obj


@dataclass
class HandshakeResult:
    transport: Transport
    remote_static: bytes
    remote_info: dict[str, Any]
    psk: bytes | None = None  # the pairing secret that matched (server side, pair mode)


class ClientHandshake:
    """Drives the initiator side: `start()` → send, `finish(msg2)` → send, then `result`."""

    def __init__(
        self,
        backend: CryptoBackend,
        *,
        mode: str,
        static: KeyPair,
        host_key: bytes,
        psk: bytes | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if mode not in PATTERN:
            raise ValueError(f"unknown mode {mode!r}")
        if (mode == SUBPROTOCOL_PAIR) != (psk is not None):
            raise ValueError("a pairing secret is needed for pairing, and only for pairing")
        if len(host_key) != 32:
            raise ValueError("the host key must be 32 bytes")
        self.mode = mode
        self.host_key = host_key
        self.info = info or {}
        self._hs = HandshakeState(
            backend,
            pattern=PATTERN[mode],
            initiator=True,
            prologue=PROLOGUE[mode],
            static=static,
            psk=psk,
        )
        self.result: HandshakeResult | None = None

    async def start(self) -> bytes:
        return await self._hs.write_message(b"")

    async def finish(self, message2: bytes) -> bytes:
        """Read message 2, check the host key, return message 3."""
        server_payload = await self._hs.read_message(message2)
        if self._hs.remote_static != self.host_key:
            raise HostKeyMismatch("the bridge's key does not match the pinned host key")
        server_info = _parse_payload(server_payload, "server")
        message3 = await self._hs.write_message(_payload(self.info))
        self.result = HandshakeResult(self._hs.split(), self.host_key, server_info)
        return message3


class ServerHandshake:
    """Drives the responder side: `respond(msg1)` → send, `finish(msg3)` → result.

    In pair mode `finish` takes the candidate pairing secrets: message 2 does not depend on the
    PSK's value, so the one that authenticates message 3 identifies which secret was used.
    """

    def __init__(
        self, backend: CryptoBackend, *, mode: str, static: KeyPair, info: dict[str, Any]
    ) -> None:
        if mode not in PATTERN:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.info = info
        placeholder = bytes(32) if mode == SUBPROTOCOL_PAIR else None
        self._hs = HandshakeState(
            backend,
            pattern=PATTERN[mode],
            initiator=False,
            prologue=PROLOGUE[mode],
            static=static,
            psk=placeholder,
        )

    async def respond(self, message1: bytes) -> bytes:
        if len(message1) != MSG1_SIZE[self.mode]:
            raise HandshakeRefused("message 1 must carry only the ephemeral key")
        await self._hs.read_message(message1)
        return await self._hs.write_message(_payload({"server": self.info}))

    async def finish(self, message3: bytes, psks: list[bytes] | None = None) -> HandshakeResult:
        if self.mode == SUBPROTOCOL_PAIR:
            for psk in psks or []:
                attempt = self._hs.fork()
                attempt.set_psk(psk)
                try:
                    payload = await attempt.read_message(message3)
                except (NoiseError, CryptoError):
                    continue
                return self._result(attempt, payload, psk)
            raise HandshakeRefused("no valid pairing secret")
        payload = await self._hs.read_message(message3)
        return self._result(self._hs, payload, None)

    def _result(self, hs: HandshakeState, payload: bytes, psk: bytes | None) -> HandshakeResult:
        remote = hs.remote_static
        assert remote is not None
        return HandshakeResult(hs.split(), remote, _parse_payload(payload, "client"), psk)
