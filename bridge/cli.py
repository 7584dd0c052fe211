"""`kite`: run the bridge, pair devices, manage them.

Human output uses `rich`; every listing command has `--json` for scripts. Errors are one line
on stderr with exit status 2 (usage) or 1 (everything else).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import errno
import importlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from agent_core import __version__

EPILOG = """\
examples:
  kite serve                          serve the current directory on http://127.0.0.1:8765
  kite serve --workspace ~/proj       serve another directory
  kite pair                           a new pairing link for the running bridge (valid 10 min)
  kite devices list                   paired devices
  kite devices revoke ab12cd34ef      unpair a device; its live connections close at once

Each command takes --state-dir (default: $KITE_STATE_DIR, else the user data dir), which holds
the host key, the device registry and the audit log. See docs/security.md for the threat model.
"""


# Modules that add subcommands (each has `register(subparsers, common_parent_parser)`).
EXTENSIONS = ("bridge.cli_agent", "bridge.cli_plugin", "bridge.cli_tls")


class CliError(Exception):
    """A failure explained in one line to the user."""


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _state_dir(args: argparse.Namespace) -> Path:
    from bridge import statedir

    return statedir.ensure_state_dir(statedir.resolve_state_dir(args.state_dir))


def _qr_text(url: str) -> str:
    import segno

    buf = io.StringIO()
    segno.make(url, error="l").terminal(out=buf, compact=True)
    return buf.getvalue()


def _default_web_dir() -> Path | None:
    candidate = Path(__file__).resolve().parent.parent / "dist" / "web"
    return candidate if (candidate / "index.html").is_file() else None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


# -- serve -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.policy import PolicyError
    from bridge.server import Bridge, BridgeConfig
    from bridge.statedir import user_config_dir

    workspace = Path(args.workspace).expanduser()
    if not workspace.exists():
        raise CliError(f"workspace {workspace} does not exist")
    if not workspace.is_dir():
        raise CliError(f"workspace {workspace} is not a directory")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together")
    from bridge.webapp import check_origin

    try:
        connect_src = [check_origin(o) for o in args.connect_src or []]
    except ValueError as exc:
        raise CliError(f"--connect-src: {exc}") from exc
    config = BridgeConfig(
        workspace=workspace.resolve(),
        state_dir=_state_dir(args),
        host=args.host,
        port=args.port,
        allowed_hosts=args.allow_host or [],
        allowed_origins=args.allow_origin or [],
        connect_src=connect_src,
        web_dir=Path(args.web_dir).resolve() if args.web_dir else _default_web_dir(),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        user_config_dir=user_config_dir(),
        max_connections=args.max_connections,
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        bridge = Bridge(config)
    except PolicyError as exc:
        raise CliError(str(exc)) from exc
    return asyncio.run(_serve(bridge, args))


async def _serve(bridge: Any, args: argparse.Namespace) -> int:
    try:
        await bridge.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"port {args.port} on {args.host} is already in use (another kite serve?); "
                "pick another with --port N, or --port 0 for any free port"
            ) from exc
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from exc
        raise
    link, expires = (None, None) if args.no_pair else bridge.new_pairing_link(args.pair_ttl)
    if args.json:
        print(
            json.dumps(
                {
                    "url": bridge.base_url,
                    "pair_url": link,
                    "expires_at": expires,
                    "workspace": str(bridge.workspace.root),
                    "state_dir": str(bridge.state_dir),
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )
    else:
        _print_banner(bridge, link, expires)
    await bridge.serve_until_signalled()
    if not args.json:
        _console(stderr=True).print("kite: bridge stopped")
    return 0


def _print_banner(bridge: Any, link: str | None, expires: float | None) -> None:
    from rich.panel import Panel
    from rich.table import Table

    con = _console()
    p = bridge.policy
    grid = Table.grid(padding=(0, 2))
    grid.add_row("app", f"[bold]{bridge.base_url}[/]")
    grid.add_row("workspace", str(bridge.workspace.root))
    grid.add_row(
        "policy",
        ("read-only" if p.read_only else "read-write")
        + (", commands allowed" if p.exec_enabled else ", commands disabled")
        + (f" (from {', '.join(p.sources)})" if p.sources else " (defaults)"),
    )
    grid.add_row("devices", f"{len(bridge.registry.list())} paired")
    grid.add_row("state", str(bridge.state_dir))
    con.print(Panel(grid, title=f"kite bridge {__version__}", expand=False))
    if link:
        con.print(_qr_text(link), end="")
        con.print(f"Pair a device: open this link on it (valid until {_when(expires)}):")
        con.print(link, markup=False, soft_wrap=True)
        con.print("[dim]New link: kite pair · Paired devices: kite devices list · Stop: Ctrl-C[/]")


# -- pair --------------------------------------------------------------------------------


def cmd_pair(args: argparse.Namespace) -> int:
    from agent_core.channel.crypto_cpython import CpythonCryptoBackend
    from agent_core.pairing import make_link
    from bridge import statedir
    from bridge.devices import Registry

    if args.ttl <= 0 or args.ttl > 7 * 24 * 3600:
        raise CliError("--ttl must be between 1 second and 7 days")
    state = _state_dir(args)
    host_key = CpythonCryptoBackend().keypair_from_private_bytes(
        statedir.load_or_create_host_key(state)
    )
    running = statedir.read_runtime_info(state)
    base = args.url or (running or {}).get("url") or "http://127.0.0.1:8765/"
    registry = Registry(state)
    try:
        secret, expires = registry.new_pairing_secret(args.ttl)
    finally:
        registry.close()
    link = make_link(base, secret, host_key.public)
    if args.json:
        print(
            json.dumps({"url": link, "expires_at": expires, "bridge_running": running is not None})
        )
        return 0
    con = _console()
    con.print(_qr_text(link), end="")
    con.print(f"Open on the device to pair (single use, valid until {_when(expires)}):")
    con.print(link, markup=False, soft_wrap=True)
    if running is None:
        con.print(f"[yellow]No bridge is running on {state}: start one with `kite serve`.[/]")
    return 0


# -- devices -----------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    from bridge.devices import Registry

    registry = Registry(_state_dir(args))
    try:
        if args.devices_cmd == "revoke":
            dev = registry.revoke(args.id)
            if dev is None:
                raise CliError(f"no device matches '{args.id}' (see `kite devices list`)")
            if args.json:
                print(json.dumps(dev.to_json()))
            else:
                _console().print(f"revoked {dev.id} ({dev.name}); its connections are closed")
            return 0
        devices = registry.list()
    finally:
        registry.close()
    if args.json:
        print(json.dumps([d.to_json() for d in devices], indent=2))
        return 0
    if not devices:
        _console().print("no paired devices; pair one with `kite pair`")
        return 0
    from rich.table import Table

    table = Table("id", "name", "paired", "last seen", "status")
    for d in devices:
        status = "[red]revoked[/]" if d.revoked else "[green]active[/]"
        table.add_row(d.id, d.name, _when(d.paired_at), _when(d.last_seen), status)
    _console().print(table)
    return 0


# -- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kite",
        description="Kite: a coding agent whose brain runs in your browser and whose hands stay "
        "on your machine, behind an end-to-end encrypted bridge.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kite {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        metavar="DIR",
        help="host key, device registry, audit log (default: $KITE_STATE_DIR or the user data dir)",
    )

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the bridge for a workspace",
        description="Run the bridge: serve the web app and the encrypted /kite/v1 endpoint, print "
        "a pairing link and its QR code. Stop with Ctrl-C (running commands are ended).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Remote devices need a secure context: use --tls-cert/--tls-key or a TLS proxy "
        "(then --allow-origin https://your.host).",
    )
    serve.add_argument(
        "--workspace",
        "-w",
        default=".",
        metavar="DIR",
        help="directory the devices may work in (default: .)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; 0.0.0.0 for the LAN)",
    )
    serve.add_argument(
        "--port", "-p", type=int, default=8765, help="port (default: 8765; 0 picks a free one)"
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="extra Host name to accept (repeatable)",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="extra browser Origin to accept, e.g. https://kite.example.com (repeatable)",
    )
    serve.add_argument(
        "--connect-src",
        action="append",
        metavar="ORIGIN",
        help="another origin the web app may connect to, added to its Content-Security-Policy: "
        "a second Kite host (wss://other:8765), a provider for the direct model route "
        "(https://api.openai.com), a device plugin's allowed host (repeatable; default: only "
        "this bridge)",
    )
    serve.add_argument(
        "--web-dir", metavar="DIR", help="built web app to serve (default: dist/web when built)"
    )
    serve.add_argument(
        "--tls-cert", metavar="FILE", help="TLS certificate (PEM) to serve HTTPS/WSS"
    )
    serve.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM)")
    serve.add_argument(
        "--pair-ttl",
        type=int,
        default=600,
        metavar="SECONDS",
        help="validity of the printed pairing link (default: 600)",
    )
    serve.add_argument(
        "--no-pair", action="store_true", help="do not create a pairing link at start"
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=64,
        metavar="N",
        help="concurrent device connections accepted (default: 64; more get HTTP 503)",
    )
    serve.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line (url, pair_url, ...) instead of the banner",
    )
    serve.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    serve.set_defaults(func=cmd_serve)

    pair = sub.add_parser(
        "pair",
        parents=[common],
        help="create a single-use pairing link",
        description="Register a single-use pairing secret with the state dir (usable by a bridge "
        "already running on it) and print the link: the bridge page with "
        "#pair=<secret>&host=<host key>.",
    )
    pair.add_argument("--json", action="store_true", help='print {"url": ..., "expires_at": ...}')
    pair.add_argument(
        "--ttl", type=int, default=600, metavar="SECONDS", help="validity (default: 600)"
    )
    pair.add_argument(
        "--url",
        metavar="URL",
        help="bridge page URL to put in the link (default: the running bridge's)",
    )
    pair.set_defaults(func=cmd_pair)

    devices = sub.add_parser(
        "devices", help="list or revoke paired devices", description="Manage paired devices."
    )
    dsub = devices.add_subparsers(dest="devices_cmd", metavar="ACTION", required=True)
    dl = dsub.add_parser("list", parents=[common], help="list paired devices")
    dl.add_argument("--json", action="store_true")
    dr = dsub.add_parser(
        "revoke", parents=[common], help="revoke a device (closes its live connections)"
    )
    dr.add_argument("id", help="device id, or a unique prefix of it")
    dr.add_argument("--json", action="store_true")
    devices.set_defaults(func=cmd_devices)

    # Feature modules add their own subcommands: `register(sub, common)`.
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from bridge.statedir import StateDirError

    try:
        return int(args.func(args) or 0)
    except (CliError, StateDirError) as exc:  # extensions raise CliError too
        print(f"kite: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
