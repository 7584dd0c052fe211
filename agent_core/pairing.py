"""Pairing links: `<bridge page>#pair=<base64url secret>&host=<base64url host public key>`.

The secret and the host key travel in the URL fragment, which browsers never send to a server.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass


def b64url(data: bytes) -> str:
    """base64url with padding: decodable by strict and lenient decoders alike."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str) -> bytes:
    text = text.strip()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


@dataclass(frozen=True)
class PairingLink:
    base_url: str  # the bridge page, without fragment
    secret: bytes
    host_key: bytes

    def url(self) -> str:
        return f"{self.base_url}#pair={b64url(self.secret)}&host={b64url(self.host_key)}"


def make_link(base_url: str, secret: bytes, host_key: bytes) -> str:
    return PairingLink(base_url.split("#", 1)[0], secret, host_key).url()


def parse_link(url: str) -> PairingLink:
    """Parse a pairing link; raises ValueError with a reason a person can act on."""
    from urllib.parse import parse_qs, urlsplit, urlunsplit  # once per pairing: kept off boot

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("a pairing link starts with http:// or https:// and names the bridge")
    fields = parse_qs(parts.fragment, keep_blank_values=True)
    try:
        secret = b64url_decode(fields["pair"][0])
        host_key = b64url_decode(fields["host"][0])
    except (KeyError, IndexError):
        raise ValueError("the link has no #pair=...&host=... fragment") from None
    if len(secret) != 32 or len(host_key) != 32:
        raise ValueError("the pairing secret and host key must be 32 bytes each")
    base = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))
    return PairingLink(base, secret, host_key)


def url_netloc(url: str) -> tuple[str, str]:
    """(scheme, netloc) of an absolute URL, lower-case scheme, as `urlsplit` gives them.

    Written out because importing `urllib.parse` (it brings `ipaddress`) costs ~80 ms of a
    browser boot under Pyodide, and every connection needs this."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha():
        raise ValueError(f"not an absolute URL: {url!r}")
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    return scheme.lower(), rest


def websocket_url(base_url: str) -> str:
    """The bridge's WebSocket endpoint for a bridge page URL."""
    scheme, netloc = url_netloc(base_url)
    ws = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme)
    if ws is None:
        raise ValueError(f"unsupported URL scheme {scheme!r}")
    return f"{ws}://{netloc}/kite/v1"
