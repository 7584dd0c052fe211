"""bridge.webapp.serve_static on a small fake build: MIME types, immutable caching of hashed
directories, precompressed copies by Accept-Encoding, the CSP, and the jail."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from websockets.datastructures import Headers

from bridge.webapp import app_csp, serve_static

HASH = "0123456789abcdef"


@pytest.fixture
def web(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    d = tmp_path / "pyodide" / HASH
    d.mkdir(parents=True)
    (d / "pyodide.asm.wasm").write_bytes(b"\0asm" + bytes(100))
    (d / "pyodide.asm.wasm.gz").write_bytes(gzip.compress(b"\0asm" + bytes(100)))
    (d / "pyodide.asm.wasm.br").write_bytes(b"brotli bytes")
    (tmp_path / "sw.js").write_text("// sw")
    return tmp_path


def _get(web: Path, path: str, **headers: str):
    h = Headers()
    h["Host"] = "127.0.0.1:8765"
    for k, v in headers.items():
        h[k.replace("_", "-")] = v
    return serve_static(web, path, "ws", h)


def test_hashed_files_are_immutable_and_typed(web: Path) -> None:
    r = _get(web, f"/pyodide/{HASH}/pyodide.asm.wasm")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/wasm"
    assert r.headers.get_all("Cache-Control") == ["public, max-age=31536000, immutable"]
    assert "Content-Encoding" not in r.headers
    page = _get(web, "/")
    assert page.headers.get_all("Cache-Control") == ["no-cache"]
    assert page.headers["Content-Type"].startswith("text/html")


def test_precompressed_by_accept_encoding(web: Path) -> None:
    path = f"/pyodide/{HASH}/pyodide.asm.wasm"
    br = _get(web, path, Accept_Encoding="gzip, deflate, br")
    assert br.headers["Content-Encoding"] == "br" and br.body == b"brotli bytes"
    gz = _get(web, path, Accept_Encoding="gzip")
    assert gz.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(gz.body).startswith(b"\0asm")
    plain = _get(web, path, Accept_Encoding="br;q=0, gzip;q=0")
    assert "Content-Encoding" not in plain.headers and plain.body.startswith(b"\0asm")
    assert br.headers["Vary"] == "Accept-Encoding"


def test_csp_is_strict(web: Path) -> None:
    csp = _get(web, "/").headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp
    assert "connect-src 'self' ws://127.0.0.1:8765 wss://127.0.0.1:8765;" in csp
    assert "default-src 'none'" in csp
    assert "connect-src 'self';" in app_csp("evil host; script-src *")


def test_jail(web: Path) -> None:
    for path in ("/../etc/passwd", "/pyodide/../../x", "/nope.js", "/%2e%2e/x"):
        assert _get(web, path).status_code == 404


def test_connect_src_adds_only_bare_origins(web: Path) -> None:
    h = Headers()
    h["Host"] = "127.0.0.1:8765"
    extra = ("https://api.openai.com", "wss://other.lan:8765", "http://[::1]:9000")
    csp = serve_static(web, "/", "ws", h, extra).headers["Content-Security-Policy"]
    assert (
        "connect-src 'self' ws://127.0.0.1:8765 wss://127.0.0.1:8765 https://api.openai.com "
        "wss://api.openai.com wss://other.lan:8765 http://[::1]:9000 ws://[::1]:9000;" in csp
    )  # an http(s) origin brings its WebSocket twin: another Kite host named by its page URL
    # Anything that could widen the policy beyond one origin is refused, not passed through.
    for bad in (
        "https://x.com; script-src *",
        "*",
        "https:",
        "'unsafe-eval'",
        "https://x.com/path",
        "ftp://x.com",
        "https://x.com https://y.com",
        "data:",
    ):
        with pytest.raises(ValueError, match="not an origin"):
            app_csp("127.0.0.1:8765", (bad,))


def test_kite_serve_connect_src(tmp_path: Path) -> None:
    """A real bridge serves the extra origin in its CSP; a bad one is a one-line CLI error."""
    import urllib.request

    from tests.harness import REPO, BridgeProcess, kite

    bad = kite(
        "serve", "--workspace", str(tmp_path), "--connect-src", "https://x; script-src *",
        state_dir=tmp_path / "state", check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "--connect-src" in bad.stderr and "not an origin" in bad.stderr
    ws = tmp_path / "ws"
    ws.mkdir()
    web_dir = REPO / "dist" / "web"
    if not (web_dir / "index.html").is_file():
        web_dir = tmp_path  # a minimal app is enough to get the page's headers
        (web_dir / "index.html").write_text("<!doctype html><title>t</title>")
    extra = ["--connect-src", "https://api.example.com", "--web-dir", str(web_dir)]
    bridge = BridgeProcess(ws, tmp_path / "state2", *extra)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{bridge.port}/", timeout=10) as page:
            csp = page.headers["Content-Security-Policy"]
    finally:
        bridge.stop()
    assert f"wss://127.0.0.1:{bridge.port} https://api.example.com wss://api.example.com;" in csp
