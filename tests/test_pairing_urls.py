"""Pairing-link and bridge-URL parsing (agent_core/pairing.py); runs on CPython and in Pyodide."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.pairing import make_link, parse_link, url_netloc, websocket_url
from tests.runtime_support import examples

WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}

hosts = st.sampled_from(
    ["127.0.0.1", "localhost", "[::1]", "Kite.Local", "h-1.example", "10.0.0.2"]
)
ports = st.none() | st.integers(1, 65535)
paths = st.sampled_from(["", "/", "/app/", "/a/b", "/x?q=1", "/?#pair=a&host=b", "?only", "#frag"])


@settings(max_examples=examples(300), deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "ws", "wss", "HTTP", "Https"]),
    host=hosts,
    port=ports,
    user=st.sampled_from(["", "u@", "u:p@"]),
    path=paths,
)
def test_websocket_url_agrees_with_urlsplit(
    scheme: str, host: str, port: int | None, user: str, path: str
) -> None:
    url = f"{scheme}://{user}{host}{'' if port is None else f':{port}'}{path}"
    parts = urlsplit(url)
    assert url_netloc(url) == (parts.scheme, parts.netloc)
    assert websocket_url(url) == urlunsplit((WS[parts.scheme], parts.netloc, "/kite/v1", "", ""))


@pytest.mark.parametrize("url", ["ftp://h/", "127.0.0.1:8000", "http:/h", "", "1http://h/", "://h"])
def test_bad_bridge_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        websocket_url(url)


def test_pairing_link_round_trip() -> None:
    secret, host = bytes(range(32)), bytes(range(32, 64))
    link = parse_link(make_link("http://127.0.0.1:8765/", secret, host))
    assert (link.base_url, link.secret, link.host_key) == ("http://127.0.0.1:8765/", secret, host)
    assert websocket_url(link.base_url) == "ws://127.0.0.1:8765/kite/v1"
    with pytest.raises(ValueError, match="fragment"):
        parse_link("http://127.0.0.1:8765/#nothing")
