"""`kite run` and `kite chat`: the agent core in a terminal, over a bridge.

Both run the same `agent_core.agent` loop the browser runs, talking to a bridge over the
encrypted channel:

- the bridge running on the state dir (`bridge.json`), or else one started in-process for the
  run, on a free loopback port, with the current directory as its workspace;
- or a remote bridge given by `--bridge URL` (pass the pairing link from `kite pair` once; the
  device key and the pinned host key are then kept in `<state dir>/remotes.json`, 0600).

Local device key: the CLI runs as the host user, who owns the state dir and its registry, so it
does not go through a pairing link. It keeps its own X25519 key in `<state dir>/cli_device_key`
(0600) and registers it directly in the device registry as "kite cli"; `kite devices revoke`
works on it like on any device (a revoked CLI key is not silently re-registered: delete the file
to make a new one).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the agent modules load when a command runs, not when `kite` parses
    from agent_core.agent.events import AgentEvent
    from agent_core.agent.loop import Agent, RunResult
    from agent_core.agent.permissions import PermissionReply, PermissionRequest, Ruleset

from bridge.cli import CliError

CLI_KEY_FILE = "cli_device_key"
REMOTES_FILE = "remotes.json"
CONFIG_FILE = "agent.json"

RUN_EPILOG = """\
examples:
  kite run "/read README.md"                 no model configured: the local router
  kite run "search for TODO"
  kite run --yes "run the tests"             --yes: commands run without asking
  kite run --model openai/gpt-4.1 "add a --verbose flag to cli.py and run the tests"
  kite run --bridge 'http://host:8765/#pair=...&host=...' "/ls"   pair once, then use the URL

Prints the final answer on stdout; progress, diffs and refusals go to stderr. Exit status: 0 done,
1 failed or a call was refused, 130 interrupted (Ctrl-C). `kite run` is non-interactive: a call
the permission rules would ask about is refused and reported (nothing waits on stdin); allow such
calls with --yes, or answer prompts on the terminal with --interactive (or use `kite chat`).
Model keys stay on the host: the bridge relays model requests with its own environment's keys.
Device key: talking to the bridge of its own state dir, the CLI uses <state dir>/cli_device_key
(0600), registered directly in that state dir's device registry as "kite cli" — it runs as the
host user who owns the state dir, so no pairing link is needed. `kite devices revoke` applies.
Config (optional): <user config dir>/agent.json, e.g.
  {"model": "anthropic/claude-sonnet-4-5", "max_steps": 50,
   "permission": {"bash": {"*": "ask", "git status*": "allow", "rm *": "deny"}},
   "models": {"my-local-model": {"context": 32000, "input": 0, "output": 0}}}
`models` sets context windows (tokens; compaction starts near them) and prices (US$ per
million tokens: input, output, cache_read, cache_write) per model name prefix; a small
built-in table covers well-known OpenAI and Anthropic models.
"""


# -- configuration ---------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> dict[str, Any]:
    from bridge.statedir import user_config_dir

    path = Path(args.config) if args.config else user_config_dir() / CONFIG_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        if args.config:
            raise CliError(f"config file {path} not found") from None
        return {}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CliError(f"{path} must hold a JSON object")
    return config


def _ruleset(config: dict[str, Any]) -> Ruleset:
    from agent_core.agent.permissions import ConfigError, Ruleset, rules_from_config

    rs = Ruleset()
    try:
        for rule in rules_from_config(config.get("permission") or {}):
            rs.add(rule)
    except ConfigError as exc:
        raise CliError(f"config: {exc}") from None
    return rs


def _model_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """The config's `models` table: context windows and prices per model name prefix."""
    from agent_core.llm import models

    try:
        return models.overrides_from_config(config.get("models"))
    except ValueError as exc:
        raise CliError(f"config: {exc}") from None


def usage_line(usage: dict[str, Any], cost: Any) -> str:
    """`tokens: 1,234 in (100 cached), 56 out · $0.0123` for a session's totals."""
    cached = int(usage.get("cache_read_tokens") or 0)
    into = int(usage.get("input_tokens") or 0) + cached + int(usage.get("cache_write_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    line = f"tokens: {into:,} in"
    if cached:
        line += f" ({cached:,} cached)"
    line += f", {out:,} out"
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        line += f" · ${cost:.4f}"
    elif into or out:
        line += " · cost unknown (no price for this model: set one under `models` in the config)"
    return line


def _model_spec(args: argparse.Namespace, config: dict[str, Any]) -> str:
    return args.model or os.environ.get("KITE_MODEL") or str(config.get("model") or "local")


def make_provider(spec: str, client: Any, on_retry: Any = None) -> Any:
    """`local` (the on-device router) or an `openai/...` / `anthropic/...` model via the bridge."""
    from agent_core.agent.local import LocalProvider

    if spec == "local" or spec.startswith("local/"):
        return LocalProvider()
    try:
        from agent_core.llm import providers
    except ModuleNotFoundError as exc:
        if exc.name not in ("agent_core.llm.providers", "agent_core.llm"):
            raise
        raise CliError(
            f"--model {spec}: model providers are not part of this build yet "
            "(agent_core/llm/providers.py is missing); run without --model for the local router"
        ) from None
    try:
        return providers.make_provider(spec, route="bridge", client=client, on_retry=on_retry)
    except ValueError as exc:
        raise CliError(f"--model: {exc}") from None


# -- connecting to a bridge -----------------------------------------------------------------


@dataclass
class Connection:
    client: Any  # KiteClient
    url: str
    workspace: str | None
    in_process: bool


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _cli_key(state: Path) -> Any:
    """This state dir's CLI device key pair, created (0600) and registered on first use."""
    from agent_core.channel.crypto_cpython import CpythonCryptoBackend
    from bridge.devices import Registry
    from bridge.statedir import write_secret_file

    backend = CpythonCryptoBackend()
    path = state / CLI_KEY_FILE
    try:
        raw = base64.b64decode(path.read_bytes().strip(), validate=True)
        if len(raw) != 32:
            raise ValueError("expected 32 bytes")
    except FileNotFoundError:
        raw = os.urandom(32)
        write_secret_file(path, base64.b64encode(raw) + b"\n")
    except (OSError, ValueError) as exc:
        raise CliError(
            f"CLI device key {path} is unreadable or corrupt ({exc}); delete it"
        ) from None
    key = backend.keypair_from_private_bytes(raw)
    registry = Registry(state)
    try:
        dev = registry.by_key(key.public)
        if dev is None:
            registry.register(key.public, f"kite cli ({socket.gethostname()})"[:64])
        elif dev.revoked:
            raise CliError(
                f"the CLI device key was revoked (device {dev.id}); delete {path} to create a "
                "new one"
            )
    finally:
        registry.close()
    return key


def _remotes(state: Path) -> dict[str, Any]:
    try:
        data = json.loads((state / REMOTES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remote_key(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path or "/", "", ""))


async def _open_remote(state: Path, url: str) -> tuple[Any, str]:
    from agent_core.channel.crypto_cpython import CpythonCryptoBackend
    from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
    from agent_core.client import KiteClient
    from agent_core.pairing import parse_link, websocket_url
    from agent_core.transport.ws_cpython import open_websocket
    from bridge.statedir import write_secret_file

    backend = CpythonCryptoBackend()
    name = f"kite cli ({socket.gethostname()})"[:64]
    if "#pair=" in url:
        try:
            link = parse_link(url)
        except ValueError as exc:
            raise CliError(f"--bridge: {exc}") from None
        raw = os.urandom(32)
        static = backend.keypair_from_private_bytes(raw)
        transport = await open_websocket(websocket_url(link.base_url), SUBPROTOCOL_PAIR)
        client = await KiteClient.handshake(
            transport,
            backend,
            mode=SUBPROTOCOL_PAIR,
            static=static,
            host_key=link.host_key,
            psk=link.secret,
            info={"name": name},
        )
        await _verify(client, link.base_url)  # only a pairing the bridge accepted is saved
        remotes = _remotes(state)
        remotes[_remote_key(link.base_url)] = {
            "host_key": _b64(link.host_key),
            "device_key": _b64(raw),
        }
        write_secret_file(state / REMOTES_FILE, json.dumps(remotes, indent=2).encode())
        return client, link.base_url
    entry = _remotes(state).get(_remote_key(url))
    if not entry:
        raise CliError(
            f"not paired with {url}: run `kite pair` on that host and pass the link once, "
            "e.g. kite run --bridge '<link>' /ls"
        )
    static = backend.keypair_from_private_bytes(base64.b64decode(entry["device_key"]))
    transport = await open_websocket(websocket_url(url), SUBPROTOCOL_CONNECT)
    client = await KiteClient.handshake(
        transport,
        backend,
        mode=SUBPROTOCOL_CONNECT,
        static=static,
        host_key=base64.b64decode(entry["host_key"]),
        info={"name": name},
    )
    return client, url


async def _verify(client: Any, where: str) -> None:
    """The bridge closes the socket after the handshake when it does not know the device: a
    ping turns that into a clear error before any work starts."""
    from agent_core.client import ChannelClosed

    try:
        await client.call("sys.ping", timeout=10)
    except (ChannelClosed, TimeoutError):
        await client.close()
        raise CliError(
            f"the bridge at {where} refused this device: it is not paired with it, or it was "
            "revoked (see `kite devices list` on the host)"
        ) from None


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[Connection]:
    """A connected client: remote, the state dir's running bridge, or an in-process one."""
    from agent_core.agent.reconnect import ReconnectingClient
    from agent_core.channel.crypto_cpython import CpythonCryptoBackend
    from agent_core.channel.noise import NoiseError
    from bridge import statedir

    state = statedir.ensure_state_dir(statedir.resolve_state_dir(args.state_dir))
    bridge: Any = None
    key: Any = None
    host_key = b""
    try:
        if args.bridge:
            client, url = await _open_remote(state, args.bridge)
            workspace = None
        else:
            key = _cli_key(state)
            backend = CpythonCryptoBackend()
            host_key = backend.keypair_from_private_bytes(
                statedir.load_or_create_host_key(state)
            ).public
            running = statedir.read_runtime_info(state)
            if running is not None:
                url, workspace = running["url"], running.get("workspace")
            else:
                bridge = await _start_bridge(state)
                url, workspace = bridge.base_url, str(bridge.workspace.root)
            client = await _open_local(url, key, host_key)
        await _verify(client, args.bridge or url)
    except (OSError, ConnectionError, NoiseError) as exc:
        if bridge is not None:
            await bridge.stop()
        where = args.bridge or "the bridge"
        raise CliError(f"cannot connect to {where}: {exc}") from None
    except BaseException:
        if bridge is not None:
            await bridge.stop()
        raise
    first_url = url

    async def reopen() -> Any:
        """A new connection after a drop: the bridge may have restarted (on another port)."""
        if args.bridge:
            return (await _open_remote(state, args.bridge))[0]
        running = statedir.read_runtime_info(state) if bridge is None else None
        target = running["url"] if running else first_url
        return await _open_local(target, key, host_key)

    def on_state(what: str, detail: str) -> None:
        if what == "reconnecting":
            print(f"kite: lost the bridge connection; reconnecting ({detail})", file=sys.stderr)
        else:
            print("kite: reconnected to the bridge", file=sys.stderr)

    rc = ReconnectingClient(reopen, client=client, on_state=on_state)
    try:
        yield Connection(rc, url, workspace, bridge is not None)
    finally:
        await rc.close()
        if bridge is not None:
            await bridge.stop()


async def _open_local(url: str, key: Any, host_key: bytes) -> Any:
    """Connect to a bridge of this host with the state dir's CLI device key."""
    from agent_core.channel.crypto_cpython import CpythonCryptoBackend
    from agent_core.channel.handshake import SUBPROTOCOL_CONNECT
    from agent_core.client import KiteClient
    from agent_core.pairing import websocket_url
    from agent_core.transport.ws_cpython import open_websocket

    transport = await open_websocket(websocket_url(url), SUBPROTOCOL_CONNECT)
    return await KiteClient.handshake(
        transport,
        CpythonCryptoBackend(),
        mode=SUBPROTOCOL_CONNECT,
        static=key,
        host_key=host_key,
        info={"name": "kite cli"},
    )


async def _start_bridge(state: Path) -> Any:
    from bridge.policy import PolicyError
    from bridge.server import Bridge, BridgeConfig
    from bridge.statedir import user_config_dir

    config = BridgeConfig(
        workspace=Path.cwd().resolve(),
        state_dir=state,
        host="127.0.0.1",
        port=0,
        user_config_dir=user_config_dir(),
    )
    try:
        bridge = Bridge(config)
    except PolicyError as exc:
        raise CliError(str(exc)) from None
    await bridge.start()
    return bridge


# -- terminal I/O ---------------------------------------------------------------------------


class LineReader:
    """Reads stdin lines in one daemon thread, so the event loop (and Ctrl-C) stay live.

    A read abandoned by Ctrl-C is not lost: the next read gets that line.
    """

    def __init__(self) -> None:
        self._pending: asyncio.Future[str | None] | None = None

    def _start(self, prompt: str) -> asyncio.Future[str | None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str | None] = loop.create_future()

        def work() -> None:
            try:
                line: str | None = input(prompt)
            except (EOFError, OSError):
                line = None
            except KeyboardInterrupt:
                line = ""
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(line))

        threading.Thread(target=work, daemon=True, name="kite-stdin").start()
        return fut

    async def read(self, prompt: str) -> str | None:
        if self._pending is None or self._pending.done():
            self._pending = self._start(prompt)
        else:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        line = await asyncio.shield(self._pending)
        self._pending = None
        return line


_TOOL_VERB = {
    "read": "Read",
    "write": "Write",
    "edit": "Edit",
    "apply_patch": "Patch",
    "glob": "Glob",
    "grep": "Grep",
    "list": "List",
    "bash": "$",
    "todowrite": "Todos",
    "todoread": "Todos",
    "question": "Ask",
    "diff": "Diff",
    "undo": "Undo",
    "redo": "Redo",
}


def describe_call(name: str, args: dict[str, Any]) -> str:
    verb = _TOOL_VERB.get(name, name)
    if name == "bash":
        return f"$ {args.get('command', '')}"
    for key in ("file_path", "pattern", "path"):
        if args.get(key):
            return f"{verb} {args[key]}"
    return verb


class Renderer:
    """Shows agent events in a terminal with `rich`; the final answer goes to stdout.

    `stream_text`: assistant text is streamed to stdout as it arrives (a terminal, or chat);
    otherwise only the final answer is printed, at the end (`kite run > file`).
    """

    def __init__(self, *, stream_text: bool, quiet: bool = False) -> None:
        from rich.console import Console

        from agent_core.agent import events

        self.ev = events
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.stream_text = stream_text
        self.quiet = quiet
        self._at_line_start = True
        self._err_open = False  # streamed command output did not end its line

    def _text(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        self._at_line_start = text.endswith("\n")

    def _end_line(self) -> None:
        if not self._at_line_start:
            self._text("\n")
        if self._err_open:
            self.err.print()
            self._err_open = False

    def show_diff(self, diff: str) -> None:
        from rich.syntax import Syntax

        if diff.strip():
            self.err.print(Syntax(diff.rstrip("\n"), "diff", theme="ansi_dark", word_wrap=True))

    def __call__(self, ev: AgentEvent) -> None:
        E = self.ev
        if isinstance(ev, E.AssistantDelta):
            if self.stream_text:
                self._text(ev.text)
            return
        if isinstance(ev, E.AssistantMessage):
            if self.stream_text:
                self._end_line()
            elif ev.message.tool_calls() and ev.message.text().strip() and not self.quiet:
                self.err.print(ev.message.text().strip(), style="dim", markup=False)
            return
        if self.quiet:
            return
        if isinstance(ev, E.ToolStarted):
            self._end_line()
            self.err.print(f"[cyan]→[/] {_esc(describe_call(ev.call.name, ev.arguments))}")
        elif isinstance(ev, E.ToolOutput):
            self.err.print(ev.text, end="", style="dim", markup=False)
            self._err_open = not ev.text.endswith("\n")
        elif isinstance(ev, E.ToolFinished):
            self._end_line()
            r = ev.result
            if r.is_error:
                first = ev.content.strip().split("\n")[0][:300]
                self.err.print(f"[red]✗[/] {ev.call.name}: {_esc(first)}")
            else:
                diff = r.metadata.get("diff")
                if diff and ev.call.name != "diff":
                    self.show_diff(diff)
                if ev.call.name == "bash":
                    code = r.metadata.get("exit_code")
                    style = "green" if code == 0 else "yellow"
                    self.err.print(f"[{style}]exit {code}[/]", highlight=False)
        elif isinstance(ev, E.TodosUpdated):
            marks = {"completed": "[green]✓[/]", "in_progress": "[yellow]●[/]", "cancelled": "✗"}
            for t in ev.todos:
                self.err.print(f"  {marks.get(t['status'], '○')} {_esc(t['content'])}")
        elif isinstance(ev, E.Retrying):
            self.err.print(f"[yellow]retrying in {ev.delay_s:.0f} s: {_esc(ev.error)}[/]")
        elif isinstance(ev, E.Compacted):
            if ev.error:
                self.err.print(f"[yellow]could not compact the conversation: {_esc(ev.error)}[/]")
            elif not self.quiet:
                how = "automatically" if ev.auto else "on request"
                self.err.print(
                    f"[dim]compacted {how}: a summary now stands for {ev.messages} messages "
                    f"(~{ev.tokens_before:,} tokens); the full history is kept[/]"
                )


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


class Prompter:
    """Approval prompts and questions on the terminal (chat, or `kite run` at a terminal)."""

    def __init__(self, renderer: Renderer, reader: LineReader) -> None:
        self.r = renderer
        self.reader = reader

    async def approve(self, req: PermissionRequest) -> PermissionReply:
        from agent_core.agent.permissions import PermissionReply, always_pattern

        con = self.r.err
        self.r._end_line()
        if req.metadata.get("diff"):
            self.r.show_diff(req.metadata["diff"])
        always = ", ".join(always_pattern(req.permission, p) for p in req.patterns) or "*"
        con.print(f"[bold yellow]?[/] [bold]{_esc(req.title)}[/]")
        con.print(
            f"  [bold]y[/] yes once · [bold]a[/] always ({_esc(req.permission)}: {_esc(always)})"
            " · [bold]n[/] no · or type what to do instead"
        )
        while True:
            line = await self.reader.read("  allow? ")
            if line is None:
                return PermissionReply("reject")
            answer = line.strip()
            low = answer.lower()
            if not answer:
                continue
            if low in ("y", "yes", "o", "once"):
                return PermissionReply("once")
            if low in ("a", "always"):
                return PermissionReply("always")
            if low in ("n", "no", "reject"):
                return PermissionReply("reject")
            return PermissionReply("reject", answer)  # feedback: the model reads it and goes on

    async def questions(self, questions: list[dict[str, Any]]) -> list[str] | None:
        answers = []
        self.r._end_line()
        for q in questions:
            self.r.err.print(f"[bold yellow]?[/] [bold]{_esc(q.get('question', ''))}[/]")
            options = q.get("options") or []
            for i, o in enumerate(options, 1):
                desc = f" — {o['description']}" if o.get("description") else ""
                self.r.err.print(f"  {i}. {_esc(o.get('label', ''))}{_esc(desc)}")
            line = await self.reader.read("  answer: ")
            if line is None:
                return None
            tokens = line.replace(",", " ").split()
            picked = [
                options[int(t) - 1]["label"]
                for t in tokens
                if t.isdigit() and 1 <= int(t) <= len(options)
            ]
            answers.append(", ".join(picked) if tokens and len(picked) == len(tokens) else line)
        return answers


# -- kite run ---------------------------------------------------------------------------------


def _message(args: argparse.Namespace) -> str:
    words = args.message
    text = sys.stdin.read() if words == ["-"] else " ".join(words)
    if not text.strip():
        raise CliError("the message is empty")
    return text


def _interactive_terminal() -> bool:
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def cmd_run(args: argparse.Namespace) -> int:
    text = _message(args)
    config = _load_config(args)
    return asyncio.run(_run(args, text, config))


async def _host_info(conn: Connection) -> dict[str, Any]:
    from agent_core.rpc.errors import RpcError

    try:
        return dict(await conn.client.call("sys.info", timeout=10))
    except (RpcError, TimeoutError):
        return {}


async def _tool_registry(args: argparse.Namespace, conn: Connection, renderer: Renderer) -> Any:
    """The built-in tools plus installed Wasm plugins: device-run ones loaded here (the CLI is on
    the host, so it reads the installed plugins directly), host-run ones through `plugin.call`."""
    from agent_core.agent.tools import default_registry
    from agent_core.agent.tools.base import ToolRegistry
    from agent_core.plugins.remote import remote_tools
    from agent_core.rpc.errors import RpcError
    from bridge import statedir
    from bridge.cli_plugin import load_installed

    tools = list(default_registry().tools.values())
    plugin_tools: list[Any] = []
    workspace = Path(conn.workspace) if conn.workspace else Path.cwd()
    try:
        plugins, errors = load_installed(workspace, statedir.resolve_state_dir(args.state_dir))
    except Exception as exc:  # a broken plugin setup must not stop the agent
        plugins, errors = [], [exc]
    for err in errors:
        renderer.err.print(f"[yellow]kite: plugin not loaded: {err}[/]", markup=True)
    plugin_tools += [t for p in plugins if p.manifest.run_on != "host" for t in p.tools()]
    with contextlib.suppress(RpcError, TimeoutError):
        plugin_tools += await remote_tools(conn.client)
    taken = {t.name for t in tools}
    for tool in plugin_tools:
        if tool.name in taken:
            renderer.err.print(f"kite: plugin tool {tool.name!r} shadows another tool; skipped")
            continue
        taken.add(tool.name)
        tools.append(tool.as_agent_tool())
    return ToolRegistry(tools)


async def _start_agent(
    args: argparse.Namespace,
    config: dict[str, Any],
    conn: Connection,
    renderer: Renderer,
    prompter: Prompter | None,
) -> tuple[Agent, Any]:
    """The agent for `kite run` / `kite chat`, on a session saved to the bridge after every step."""
    sync = await _open_session(args, conn, _model_spec(args, config))
    agent = _build_agent(
        args,
        config,
        conn,
        renderer,
        prompter,
        await _host_info(conn),
        await _tool_registry(args, conn, renderer),
        session=sync.session,
    )
    agent.on_event = sync.wrap(renderer)
    return agent, sync


def _build_agent(
    args: argparse.Namespace,
    config: dict[str, Any],
    conn: Connection,
    renderer: Renderer,
    prompter: Prompter | None,
    info: dict[str, Any],
    registry: Any = None,
    session: Any = None,
) -> Agent:
    from agent_core.agent.events import Retrying
    from agent_core.agent.local import LocalProvider
    from agent_core.agent.loop import Agent, LoopConfig, system_prompt
    from agent_core.agent.permissions import PermissionGate
    from agent_core.agent.session import Session

    spec = _model_spec(args, config)

    def on_retry(error: Any, attempt: int, delay: float) -> None:
        renderer(Retrying(attempt, delay, str(error)))

    provider = make_provider(spec, conn.client, on_retry)
    gate = PermissionGate(
        _ruleset(config), approve=prompter.approve if prompter else None, yes=args.yes
    )
    max_steps = args.max_steps or int(config.get("max_steps") or 50)
    model = spec.partition("/")[2] if "/" in spec else spec
    from agent_core.llm import models

    overrides = _model_overrides(config)
    context = 0 if spec == "local" else models.context_limit(spec, overrides)
    return Agent(
        provider,
        conn.client,
        registry=registry,
        session=session or Session(),
        gate=gate,
        config=LoopConfig(
            model=model,
            max_steps=max_steps,
            system=system_prompt(info, datetime.date.today().isoformat()),
            context_limit=context,
            models=overrides,
        ),
        on_event=renderer,
        ask_user=prompter.questions if prompter else None,
        command_provider=LocalProvider(),
    )


def _note_workspace(renderer: Renderer, conn: Connection) -> None:
    if conn.in_process or not conn.workspace:
        return
    cwd = Path.cwd().resolve()
    ws = Path(conn.workspace)
    if cwd != ws and ws not in cwd.parents:
        renderer.err.print(
            f"[yellow]kite: note: using the bridge running on this state dir, whose workspace "
            f"is {_esc(str(ws))} (not the current directory)[/]"
        )


SESSION_CACHE_DIR = "session-cache"


def _session_cache(args: argparse.Namespace) -> Any:
    """The device-side copy of sessions: `<state dir>/session-cache/<id>.json`."""
    from agent_core.agent.sync import JsonFileCache
    from bridge import statedir

    return JsonFileCache(statedir.resolve_state_dir(args.state_dir) / SESSION_CACHE_DIR)


async def _open_session(args: argparse.Namespace, conn: Connection, model: str) -> Any:
    """A `SessionSync` for this run: the session named by --session / --continue, its history
    loaded from the bridge, or a new one (created on the bridge at the first save)."""
    from agent_core.agent.session import Session
    from agent_core.agent.sync import SessionSync, resume
    from agent_core.rpc.errors import ENOENT, RpcError

    cache = _session_cache(args)
    sid = getattr(args, "session", None)
    try:
        if getattr(args, "continue_", False):
            listed = await conn.client.call("session.list", {"limit": 1}, timeout=30)
            if not listed["sessions"]:
                raise CliError("--continue: there is no session to continue on this bridge")
            sid = listed["sessions"][0]["id"]
        if sid:
            return await resume(conn.client, sid, cache=cache, model=model)
    except RpcError as exc:
        if exc.code == ENOENT:
            raise CliError(f"--session: no session {sid} on this bridge") from None
        raise CliError(f"cannot load the session: {exc}") from None
    except TimeoutError:
        raise CliError("cannot load the session: the bridge did not answer") from None
    return SessionSync(conn.client, Session(), cache=cache, model=model)


def _sync_report(sync: Any, renderer: Renderer) -> None:
    if sync.error:
        renderer.err.print(f"[yellow]kite: {_esc(sync.error)}[/]")


async def _run(args: argparse.Namespace, text: str, config: dict[str, Any]) -> int:
    renderer = Renderer(stream_text=sys.stdout.isatty() and not args.json, quiet=args.quiet)
    if args.interactive and not _interactive_terminal():
        raise CliError("--interactive needs a terminal on stdin and stderr")
    prompter = Prompter(renderer, LineReader()) if args.interactive else None
    async with connect(args) as conn:
        _note_workspace(renderer, conn)
        agent, sync = await _start_agent(args, config, conn, renderer, prompter)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, agent.abort)
        try:
            result = await agent.run(text)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            await sync.push()
        _sync_report(sync, renderer)
    session = agent.session
    usage = dataclasses.asdict(session.usage)
    if args.json:
        doc = {
            "text": result.text,
            "reason": result.reason,
            "error": result.error,
            "steps": result.steps,
            "session": session.id,
            "usage": usage,
            "cost_usd": session.cost_usd,
        }
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    elif not args.quiet and any(usage.values()):
        renderer._end_line()
        print(f"kite: {usage_line(usage, session.cost_usd)}", file=sys.stderr)
    return _report(result, renderer, show_text=not args.json)


def _report(result: RunResult, renderer: Renderer, show_text: bool = True) -> int:
    if show_text and not renderer.stream_text and result.text:
        sys.stdout.write(result.text if result.text.endswith("\n") else result.text + "\n")
        sys.stdout.flush()
    renderer._end_line()
    for ref in result.refusals:
        print(
            f"kite: refused {ref.tool} `{ref.subject}`: it needs approval and this run is "
            "non-interactive; rerun with --yes to allow it",
            file=sys.stderr,
        )
    if result.reason == "aborted":
        print("kite: interrupted", file=sys.stderr)
        return 130
    if result.reason == "error":
        print(f"kite: {result.error}", file=sys.stderr)
        return 1
    if result.reason == "max_steps":
        print(f"kite: stopped after {result.steps} steps (raise --max-steps)", file=sys.stderr)
        return 1
    if result.reason == "max_tokens":
        print("kite: the answer was cut at the model's output token limit", file=sys.stderr)
        return 1
    if result.reason == "rejected":
        print("kite: stopped: a call was rejected", file=sys.stderr)
        return 1
    return 1 if result.refusals else 0


# -- kite chat --------------------------------------------------------------------------------

CHAT_HELP = """\
Chat commands: /exit (or Ctrl-D) quits · /new starts a new session · /help shows this.
/compact summarises the conversation so far (with a model) to free its context; the full
history stays saved. /undo and /redo revert and re-apply the file changes of a step.
Ctrl-C stops the current step; the conversation is kept.
Slash commands for the workspace work with any model:"""


def cmd_chat(args: argparse.Namespace) -> int:
    config = _load_config(args)
    return asyncio.run(_chat(args, config))


async def _chat(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from agent_core.agent.local import HELP as LOCAL_HELP
    from agent_core.agent.session import Session
    from agent_core.agent.sync import SessionSync

    renderer = Renderer(stream_text=True)
    reader = LineReader()
    prompter = Prompter(renderer, reader)
    async with connect(args) as conn:
        _note_workspace(renderer, conn)
        spec = _model_spec(args, config)
        agent, sync = await _start_agent(args, config, conn, renderer, prompter)
        if sync.session.messages:
            renderer.err.print(
                f"[dim]resumed session {sync.session.id}: "
                f"{_esc(sync.session.title)} ({len(sync.session.messages)} messages)[/]"
            )
        where = conn.workspace or conn.url
        renderer.err.print(
            f"[bold]kite chat[/] · model [cyan]{_esc(spec)}[/] · workspace {_esc(str(where))}\n"
            "[dim]/help for commands, Ctrl-C stops a step, Ctrl-D quits[/]"
        )
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            if not agent.abort():
                renderer.err.print("\n[dim](Ctrl-D or /exit to quit)[/]")

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            while True:
                line = await reader.read("\n› ")
                if line is None:
                    break
                text = line.strip()
                if not text:
                    continue
                if text in ("/exit", "/quit", "/q"):
                    break
                if text == "/help":
                    renderer.err.print(CHAT_HELP, markup=False)
                    renderer.err.print(LOCAL_HELP, markup=False)
                    continue
                if text == "/new":
                    agent.session = Session()
                    sync = SessionSync(
                        conn.client, agent.session, cache=_session_cache(args), model=spec
                    )
                    agent.on_event = sync.wrap(renderer)
                    renderer.err.print("[dim]new session[/]")
                    continue
                try:
                    result = await agent.run(text)
                finally:
                    await sync.push()
                _sync_report(sync, renderer)
                usage = dataclasses.asdict(agent.session.usage)
                if any(usage.values()):
                    line = usage_line(usage, agent.session.cost_usd)
                    renderer.err.print(f"[dim]session {_esc(line)}[/]")
                if result.reason == "aborted":
                    renderer._end_line()
                    renderer.err.print("[yellow]stopped[/]")
                elif result.reason == "error" and (result.error or "") not in result.text:
                    renderer.err.print(f"[red]error:[/] {_esc(result.error or '')}")
                elif result.reason == "max_steps":
                    renderer.err.print(f"[yellow]stopped after {result.steps} steps[/]")
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
    return 0


# -- kite sessions --------------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace) -> int:
    return asyncio.run(_sessions(args))


async def _sessions(args: argparse.Namespace) -> int:
    from agent_core.rpc.errors import RpcError

    async with connect(args) as conn:
        try:
            res = await conn.client.call("session.list", {"limit": args.limit}, timeout=30)
        except RpcError as exc:
            raise CliError(f"cannot list sessions: {exc}") from None
    rows = res["sessions"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sessions", file=sys.stderr)
    for r in rows:
        when = datetime.datetime.fromtimestamp(r["updated_at"]).strftime("%Y-%m-%d %H:%M")
        usage = r.get("usage") or {}
        tokens = sum(
            int(usage.get(k) or 0)
            for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        )
        cost = usage.get("cost_usd", 0.0) if tokens else 0.0
        price = f"${cost:.4f}" if isinstance(cost, (int, float)) else "$?"
        print(
            f"{r['id']}  {when}  {r['messages']:>4} msgs  {tokens:>9,} tok  {price:>9}  "
            f"{r['title']}"
        )
    return 0


# -- registration ---------------------------------------------------------------------------


def _agent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        metavar="PROVIDER/MODEL",
        help="openai/<model> or anthropic/<model> (keys stay on the host); default: $KITE_MODEL, "
        "the config's model, else `local` (no model: a deterministic command router)",
    )
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="allow every call the permission rules would ask about (deny rules still apply)",
    )
    p.add_argument(
        "--bridge",
        metavar="URL",
        help="use a remote bridge: its pairing link the first time, then its URL",
    )
    p.add_argument(
        "--max-steps", type=int, metavar="N", help="model turns per message (default 50)"
    )
    p.add_argument("--config", metavar="FILE", help="agent config JSON (default: user config dir)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--session",
        metavar="ID",
        help="continue the session ID saved on the bridge (see `kite sessions`)",
    )
    resume.add_argument(
        "--continue",
        "-c",
        dest="continue_",
        action="store_true",
        help="continue the most recent session saved on the bridge",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the agent on one message, non-interactively",
        description="Run the agent on MESSAGE in the current directory's workspace and print the "
        "final answer. Uses the bridge running on the state dir, or starts one in-process.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _agent_options(run)
    run.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout: text, reason, error, steps, session, usage, "
        "cost_usd",
    )
    run.add_argument(
        "--interactive",
        "-i",
        action="store_true",
        help="ask for approvals and answers on the terminal instead of refusing",
    )
    run.add_argument("message", nargs="+", metavar="MESSAGE", help="what to do ('-': stdin)")
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser(
        "chat",
        parents=[common],
        help="chat with the agent in the terminal",
        description="An interactive session with the agent: streaming answers, diffs, approval "
        "prompts. Ctrl-C stops the current step without losing the conversation.",
    )
    _agent_options(chat)
    chat.set_defaults(func=cmd_chat)

    sessions = sub.add_parser(
        "sessions",
        parents=[common],
        help="list the conversations saved on the bridge",
        description="Conversations of `kite run`, `kite chat` and the web app, newest first. "
        "Continue one with `kite run --session ID` (or --continue for the newest).",
    )
    sessions.add_argument(
        "--bridge", metavar="URL", help="a remote bridge (paired before with `kite run`)"
    )
    sessions.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (50)")
    sessions.add_argument("--json", action="store_true", help="JSON output")
    sessions.set_defaults(func=cmd_sessions)
