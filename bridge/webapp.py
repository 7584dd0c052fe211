"""Plain HTTP on the bridge's port: the built web app when present, a status page otherwise.

websockets answers these from `process_request`; each response closes its connection, which is
fine for a loopback or LAN PWA whose assets the service worker caches after the first visit.

The app (built by ``build.py``, see docs/web.md) gets:
- ``Cache-Control: immutable`` for files under content-hashed directories (``app/<hash>/``,
  ``pyodide/<hash>/``, ``py/<hash>/``): their URL changes whenever their bytes do; ``no-cache``
  (revalidate) for the rest (``index.html``, ``sw.js``, the manifest), so a new build shows up;
- the ``.br``/``.gz`` copy build.py wrote, when the request's ``Accept-Encoding`` allows it;
- a strict CSP: scripts, workers, styles only from the bridge itself (no inline script), WebAssembly
  compilation allowed (``'wasm-unsafe-eval'``, Pyodide needs it), and connections only to the
  bridge's own origin and its ``ws``/``wss`` form. No COOP/COEP beyond same-origin opener: Pyodide
  needs no ``SharedArrayBuffer`` here, and ``require-corp`` would buy nothing for a same-origin app.
"""

from __future__ import annotations

import html
import mimetypes
import re
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

from agent_core import __version__

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".whl": "application/octet-stream",
    ".zip": "application/zip",
    ".txt": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATUS_CSP = "default-src 'none'; style-src 'unsafe-inline'"
HASHED = re.compile(r"^(app|pyodide|py)/[0-9a-f]{16}/")
"""Paths under a content-hashed directory of build.py's output: safe to cache forever."""
IMMUTABLE = "public, max-age=31536000, immutable"
ENCODINGS = ((".br", "br"), (".gz", "gzip"))


ORIGIN = re.compile(
    r"(https?|wss?)://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|(https?|wss?)://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)
"""An origin the host owner may add to connect-src: scheme, host, optional port; nothing else."""


def check_origin(value: str) -> str:
    """`value` as a CSP source if it is a bare origin; ValueError (with the reason) otherwise."""
    origin = value.strip().rstrip("/")
    if not ORIGIN.fullmatch(origin):
        raise ValueError(
            f"{value!r} is not an origin like https://api.example.com or wss://host:8765 "
            "(scheme http, https, ws or wss; a host; an optional port; no path)"
        )
    return origin


def app_csp(host: str | None, connect_src: tuple[str, ...] = ()) -> str:
    """The web app's Content-Security-Policy; `host` is the request's (already vetted) Host.

    `connect_src`: origins the host owner lets the app reach besides this bridge (another
    paired Kite host, a provider for the direct model route, a device plugin's allowed host).
    An http(s) origin also allows its WebSocket twin (ws/wss, same host and port): another Kite
    host is named by its page's address, as in its pairing link, and the app reaches it there
    by WebSocket, which CSP counts as another scheme.
    """
    connect = "'self'"
    if host and re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host):
        connect += f" ws://{host} wss://{host}"
    for origin in connect_src:
        checked = check_origin(origin)
        connect += " " + checked
        scheme, sep, rest = checked.partition("://")
        twin = {"http": "ws", "https": "wss"}.get(scheme.lower())
        if twin is not None:
            connect += f" {twin}{sep}{rest}"
    return (
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
        f"style-src 'self'; img-src 'self' data:; connect-src {connect}; manifest-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _accepts(accept_encoding: str, coding: str) -> bool:
    """True if `coding` is listed in Accept-Encoding without q=0."""
    for part in accept_encoding.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in (coding, "*"):
            q = params.replace(" ", "")
            try:
                return not q.startswith("q=") or float(q[2:]) > 0
            except ValueError:
                return False
    return False


def response(
    status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> Response:
    values = {"Content-Type": content_type, "Content-Length": str(len(body))}
    values["Cache-Control"] = "no-store"
    values.update(SECURITY_HEADERS)
    values.update(extra or {})  # websockets' Headers appends on assignment: merge first
    headers = Headers()
    for k, v in values.items():
        headers[k] = v
    reasons = {
        200: "OK",
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        429: "Too Many Requests",
        503: "Service Unavailable",
    }
    return Response(status, reasons.get(status, "Error"), headers, body)


def text_response(status: int, text: str) -> Response:
    return response(status, text.encode(), "text/plain; charset=utf-8")


def status_page(workspace_name: str) -> Response:
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Kite bridge</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
code{{background:#eee;padding:0 .3em}}</style></head><body>
<h1>Kite bridge {html.escape(__version__)}</h1>
<p>The bridge is running for workspace <code>{html.escape(workspace_name)}</code>.</p>
<p>The web app is not built on this host. Build it with <code>python build.py</code>, or connect
with <code>kite run</code> / <code>kite chat</code> from a terminal.</p>
<p>Devices talk to this bridge only over the end-to-end encrypted endpoint
<code>/kite/v1</code>, after pairing.</p></body></html>"""
    return response(
        200, body.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": STATUS_CSP}
    )


def serve_static(
    web_dir: Path | None,
    path: str,
    workspace_name: str,
    headers: Headers | None = None,
    connect_src: tuple[str, ...] = (),
) -> Response:
    """GET a file of the built web app; never anything outside `web_dir`.

    `headers` (the request's) enable precompressed responses and the ws/wss CSP source.
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    if web_dir is None or not (web_dir / "index.html").is_file():
        if path in ("/", "/index.html"):
            return status_page(workspace_name)
        return text_response(404, "not found\n")
    rel = path.lstrip("/") or "index.html"
    if "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
        return text_response(404, "not found\n")
    root = web_dir.resolve()
    target = (root / rel).resolve()
    if root not in target.parents or not target.is_file():
        return text_response(404, "not found\n")
    ctype = (
        MIME.get(target.suffix)
        or mimetypes.guess_type(target.name)[0]
        or "application/octet-stream"
    )
    extra = {
        "Cache-Control": IMMUTABLE if HASHED.match(rel) else "no-cache",
        "Content-Security-Policy": app_csp(headers.get("Host") if headers else None, connect_src),
        "Vary": "Accept-Encoding",
    }
    if rel == "sw.js":
        extra["Service-Worker-Allowed"] = "/"
    accept = headers.get("Accept-Encoding", "") if headers else ""
    for suffix, coding in ENCODINGS:
        packed = target.with_name(target.name + suffix)
        if accept and _accepts(accept, coding) and packed.is_file():
            extra["Content-Encoding"] = coding
            return response(200, packed.read_bytes(), ctype, extra)
    return response(200, target.read_bytes(), ctype, extra)
