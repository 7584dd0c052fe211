"""`kite plugin ...`: write, build, test, sign, install, trust and list Wasm plugins.

    kite plugin new NAME [--lang c|zig|wat]   a project from a template (header, manifest, tests)
    kite plugin build [DIR]                   compile and pin the module's sha256 in the manifest
    kite plugin test [DIR]                    run tests.json on every engine; they must agree
    kite plugin keygen [--key FILE]           an Ed25519 publisher key
    kite plugin sign [DIR] [--key FILE]       sign the manifest
    kite plugin install [DIR] [--user]        into ./.kite/plugins/ (or the user's plugin dir)
    kite plugin trust NAME | --key KEY        let an unsigned plugin, or a publisher, load
    kite plugin list                          installed plugins, their tools and trust
    kite plugin call TOOL '{"arg": ...}'      try an installed plugin's tool

Trust lives in the host owner's config only: `[plugins]` in `<config dir>/bridge.toml`
(`trusted_keys`, `trusted_unsigned`, `memory_mib`, `timeout_ms`, `scratch_mib`) plus
`<config dir>/plugin-trust.json`, which `kite plugin trust` maintains. A workspace cannot trust
its own plugins.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

from bridge.cli import CliError

WORKSPACE_PLUGINS = Path(".kite") / "plugins"
TRUST_FILE = "plugin-trust.json"
DEFAULT_KEY = "plugin-signing-key.pem"


# -- host config -----------------------------------------------------------------------------


def config_dir() -> Path:
    env = os.environ.get("KITE_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    from bridge.statedir import user_config_dir

    return user_config_dir()


def user_plugins_dir(state_dir: str | None) -> Path:
    from bridge.statedir import resolve_state_dir

    return resolve_state_dir(state_dir) / "plugins"


def _read_trust_file(cfg: Path) -> dict[str, list[str]]:
    try:
        data = json.loads((cfg / TRUST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"trusted_keys": [], "trusted_unsigned": []}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {cfg / TRUST_FILE}: {exc}") from None
    return {
        "trusted_keys": list(data.get("trusted_keys", [])),
        "trusted_unsigned": list(data.get("trusted_unsigned", [])),
    }


def load_plugin_host_config(cfg: Path | None = None) -> tuple[Any, Any]:
    """The host's (TrustPolicy, HostLimits) from the user's config (for the bridge too)."""
    from agent_core.plugins.manifest import TrustPolicy, parse_key_id
    from agent_core.plugins.sandbox import MIB, HostLimits, PluginError

    cfg = config_dir() if cfg is None else cfg
    table: dict[str, Any] = {}
    toml_path = cfg / "bridge.toml"
    if toml_path.is_file():
        try:
            table = tomllib.loads(toml_path.read_text(encoding="utf-8")).get("plugins", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CliError(f"{toml_path}: {exc}") from None
    known = {"trusted_keys", "trusted_unsigned", "memory_mib", "timeout_ms", "scratch_mib"}
    unknown = set(table) - known
    if unknown:
        raise CliError(f"{toml_path}: unknown [plugins] key(s): {', '.join(sorted(unknown))}")
    extra = _read_trust_file(cfg)
    try:
        keys = frozenset(
            parse_key_id(k) for k in [*table.get("trusted_keys", []), *extra["trusted_keys"]]
        )
    except PluginError as exc:
        raise CliError(f"{toml_path} or {TRUST_FILE}: {exc}") from None
    names = frozenset([*table.get("trusted_unsigned", []), *extra["trusted_unsigned"]])
    limits = HostLimits()
    changes: dict[str, int] = {}
    if "memory_mib" in table:
        changes["memory_bytes"] = int(table["memory_mib"]) * MIB
    if "timeout_ms" in table:
        changes["timeout_ms"] = int(table["timeout_ms"])
    if "scratch_mib" in table:
        changes["scratch_bytes"] = int(table["scratch_mib"]) * MIB
    if changes:
        from dataclasses import replace

        limits = replace(limits, **changes)
    return TrustPolicy(keys, names), limits


def _host(args: argparse.Namespace) -> Any:
    from agent_core.plugins.plugin import PluginHost
    from agent_core.plugins.sandbox import UrllibHttpClient
    from bridge.statedir import resolve_state_dir

    trust, limits = load_plugin_host_config()
    scratch = resolve_state_dir(args.state_dir) / "plugin-scratch"
    return PluginHost(trust=trust, limits=limits, scratch_root=scratch, http=UrllibHttpClient())


def _project(args: argparse.Namespace) -> Path:
    path = Path(getattr(args, "dir", None) or ".").resolve()
    if not (path / "kite-plugin.json").is_file():
        raise CliError(f"no kite-plugin.json in {path} (create a project with `kite plugin new`)")
    return path


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# -- commands --------------------------------------------------------------------------------


def cmd_new(args: argparse.Namespace) -> int:
    from agent_core.plugins import sdk

    dest = Path(args.dir or args.name)
    try:
        files = sdk.new_project(dest, args.name, args.lang)
    except sdk.SdkError as exc:
        raise CliError(str(exc)) from None
    con = _console()
    con.print(f"created {args.lang} plugin [bold]{args.name}[/] in {dest}:")
    for f in files:
        con.print(f"  {f}")
    con.print(f"next: cd {dest} && kite plugin build && kite plugin test")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from agent_core.plugins import sdk

    project = _project(args)
    t = time.perf_counter()
    try:
        result = sdk.build(project, force=args.force)
    except sdk.SdkError as exc:
        raise CliError(str(exc)) from None
    took = time.perf_counter() - t
    if args.json:
        print(
            json.dumps({"wasm": str(result.wasm), "sha256": result.sha256, "cached": result.cached})
        )
        return 0
    size = result.wasm.stat().st_size
    how = "up to date" if result.cached else f"built in {took:.1f} s"
    _console().print(f"{result.wasm.name}: {size} bytes, sha256 {result.sha256} ({how})")
    return 0


def _runners(names: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    from agent_core.plugins import sdk

    available: dict[str, Any] = {"wasmtime": sdk.kite_runner()}
    coarse = []
    js = _js_runner()
    if js is not None:
        available["js"] = js
    extism = sdk.extism_runner()
    if extism is not None:
        available["extism"] = extism
        coarse.append("extism")
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise CliError(
                f"engine(s) not available here: {', '.join(missing)} "
                f"(available: {', '.join(available)})"
            )
        available = {n: available[n] for n in names}
    return available, [c for c in coarse if c in available]


def _js_runner() -> Any:
    """Kite's host on the JavaScript WebAssembly engine (Pyodide under Node), if set up."""
    try:
        from agent_core.plugins.js_runner import node_runner
    except ImportError:
        return None
    return node_runner()


def cmd_test(args: argparse.Namespace) -> int:
    from agent_core.plugins import sdk

    project = _project(args)
    runners, coarse = _runners(args.engine)
    try:
        if not args.no_build:
            sdk.build(project)
        results = sdk.run_tests(project, runners, coarse)
    except sdk.SdkError as exc:
        raise CliError(str(exc)) from None
    failed = [r for r in results if not r.passed]
    if args.json:
        print(
            json.dumps(
                {
                    "engines": list(runners),
                    "passed": len(results) - len(failed),
                    "failed": [{"name": r.name, "problems": r.problems} for r in failed],
                }
            )
        )
    else:
        con = _console()
        con.print(f"engines: {', '.join(runners)}")
        for r in results:
            mark = "[green]ok[/]  " if r.passed else "[red]FAIL[/]"
            con.print(f"{mark} {r.name}")
            for p in r.problems:
                con.print(f"       {p}", markup=False)
        con.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent_core.plugins import sdk

    path = Path(args.key) if args.key else config_dir() / DEFAULT_KEY
    try:
        kid = sdk.keygen(path)
    except sdk.SdkError as exc:
        raise CliError(str(exc)) from None
    con = _console()
    con.print(f"private key: {path} (keep it secret)")
    con.print(f"public key:  {kid}", markup=False)
    con.print("users trust it with: kite plugin trust --key " + kid, markup=False)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from agent_core.plugins import sdk
    from agent_core.plugins.sandbox import PluginError

    project = _project(args)
    key_path = Path(args.key) if args.key else config_dir() / DEFAULT_KEY
    if not key_path.is_file():
        raise CliError(f"no key at {key_path}: create one with `kite plugin keygen`")
    try:
        kid = sdk.sign(project, sdk.load_private_key(key_path))
    except (sdk.SdkError, PluginError) as exc:
        raise CliError(str(exc)) from None
    _console().print(f"signed {project / 'kite-plugin.json'} with {kid}", markup=False)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from agent_core.plugins import sdk
    from agent_core.plugins.sandbox import PluginError

    project = _project(args)
    if args.user:
        dest_root = user_plugins_dir(args.state_dir)
    else:
        dest_root = Path(args.workspace or ".").resolve() / WORKSPACE_PLUGINS
    try:
        dest = sdk.install(project, dest_root)
    except (sdk.SdkError, PluginError) as exc:
        raise CliError(str(exc)) from None
    con = _console()
    con.print(f"installed into {dest}")
    trust, _ = load_plugin_host_config()
    from agent_core.plugins.manifest import load_manifest

    try:
        note = trust.check(load_manifest(dest))
        con.print(f"trust: {note}", markup=False)
    except PluginError as exc:
        con.print(f"[yellow]not loadable yet:[/] {escape(str(exc))}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from agent_core.plugins.manifest import key_id, parse_key_id
    from agent_core.plugins.sandbox import PluginError

    cfg = config_dir()
    data = _read_trust_file(cfg)
    if args.key:
        try:
            entry = key_id(parse_key_id(args.key))
        except PluginError as exc:
            raise CliError(str(exc)) from None
        field, what = "trusted_keys", f"publisher key {entry}"
    elif args.name:
        entry, field, what = args.name, "trusted_unsigned", f"plugin {args.name!r}"
    else:
        raise CliError("give a plugin NAME or --key KEY")
    items = data[field]
    if args.remove:
        if entry not in items:
            raise CliError(f"{what} is not in {cfg / TRUST_FILE}")
        items.remove(entry)
    elif entry not in items:
        items.append(entry)
    cfg.mkdir(parents=True, exist_ok=True)
    tmp = cfg / (TRUST_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, cfg / TRUST_FILE)
    _console().print(f"{'untrusted' if args.remove else 'trusted'} {what}", markup=False)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from agent_core.plugins.manifest import load_manifest
    from agent_core.plugins.plugin import discover
    from agent_core.plugins.sandbox import PluginError

    trust, _ = load_plugin_host_config()
    dirs = [
        Path(args.workspace or ".").resolve() / WORKSPACE_PLUGINS,
        user_plugins_dir(args.state_dir),
    ]
    rows = []
    for path in discover(dirs):
        row: dict[str, Any] = {"path": str(path)}
        try:
            m = load_manifest(path)
            row.update(
                name=m.name,
                version=m.version,
                run_on=m.run_on,
                tools=[t.name for t in m.tools],
            )
            m.load_wasm()
            row["trust"] = trust.check(m)
            row["loadable"] = True
        except PluginError as exc:
            row.setdefault("name", path.name)
            row["trust"] = str(exc)
            row["loadable"] = False
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        _console().print(
            f"no plugins installed (looked in {dirs[0]} and {dirs[1]}); "
            "install one with `kite plugin install`"
        )
        return 0
    from rich.table import Table

    table = Table("name", "version", "tools", "runs on", "status")
    for r in rows:
        status = ("[green]ok[/] " if r["loadable"] else "[red]refused[/] ") + escape(r["trust"])
        table.add_row(
            r["name"],
            r.get("version", "-"),
            ", ".join(r.get("tools", [])),
            r.get("run_on", "-"),
            status,
        )
    _console().print(table)
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    from agent_core.plugins.plugin import Plugin, discover
    from agent_core.plugins.sandbox import PluginError

    try:
        arguments = json.loads(args.arguments)
    except ValueError as exc:
        raise CliError(f"the arguments are not JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise CliError("the arguments must be a JSON object")
    host = _host(args)
    dirs = [
        Path(args.workspace or ".").resolve() / WORKSPACE_PLUGINS,
        user_plugins_dir(args.state_dir),
    ]
    from agent_core.plugins.manifest import load_manifest

    for path in discover(dirs):
        try:
            if not any(t.name == args.tool for t in load_manifest(path).tools):
                continue
            plugin = Plugin.load(path, host)
            tool = next(t for t in plugin.tools() if t.name == args.tool)
            print(tool.call_sync(arguments))
            return 0
        except PluginError as exc:
            raise CliError(f"{args.tool}: {exc}") from None
    raise CliError(f"no installed plugin has a tool named {args.tool!r} (see `kite plugin list`)")


# -- parser ----------------------------------------------------------------------------------


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    plugin = sub.add_parser(
        "plugin",
        help="write, build, test, sign, install and list Wasm plugins",
        description="Wasm plugins (Extism ABI) that give the agent new tools, sandboxed. "
        "See docs/plugins.md.",
    )
    ps = plugin.add_subparsers(dest="plugin_cmd", metavar="ACTION", required=True)

    p = ps.add_parser("new", help="create a plugin project from a template")
    p.add_argument("name", help="plugin name (lowercase letters, digits, _ and -)")
    p.add_argument("--lang", choices=("c", "zig", "wat"), default="c", help="default: c")
    p.add_argument("--dir", help="where to create it (default: ./NAME)")
    p.set_defaults(func=cmd_new)

    p = ps.add_parser("build", help="compile the plugin and pin its sha256 in the manifest")
    p.add_argument("dir", nargs="?", help="project directory (default: .)")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = ps.add_parser("test", parents=[common], help="run tests.json on every engine")
    p.add_argument("dir", nargs="?", help="project directory (default: .)")
    p.add_argument(
        "--engine",
        action="append",
        choices=("wasmtime", "js", "extism"),
        help="only this engine (repeatable; default: all available)",
    )
    p.add_argument("--no-build", action="store_true", help="do not build first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_test)

    p = ps.add_parser("keygen", help="create an Ed25519 publisher key")
    p.add_argument("--key", metavar="FILE", help=f"where (default: <config dir>/{DEFAULT_KEY})")
    p.set_defaults(func=cmd_keygen)

    p = ps.add_parser("sign", help="sign the plugin's manifest (covers the module's hash)")
    p.add_argument("dir", nargs="?", help="project directory (default: .)")
    p.add_argument(
        "--key", metavar="FILE", help=f"private key (default: <config dir>/{DEFAULT_KEY})"
    )
    p.set_defaults(func=cmd_sign)

    p = ps.add_parser("install", parents=[common], help="install a built plugin")
    p.add_argument("dir", nargs="?", help="project directory (default: .)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="into the user's plugin dir")
    where.add_argument("--workspace", metavar="DIR", help="workspace (default: .)")
    p.set_defaults(func=cmd_install)

    p = ps.add_parser("trust", help="trust an unsigned plugin by name, or a publisher key")
    p.add_argument("name", nargs="?", help="plugin name")
    p.add_argument("--key", metavar="KEY", help="publisher key (ed25519:...)")
    p.add_argument("--remove", action="store_true", help="withdraw the trust instead")
    p.set_defaults(func=cmd_trust)

    p = ps.add_parser("list", parents=[common], help="installed plugins and their tools")
    p.add_argument("--workspace", metavar="DIR", help="workspace (default: .)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = ps.add_parser("call", parents=[common], help="call an installed plugin's tool")
    p.add_argument("tool", help="tool name (see `kite plugin list`)")
    p.add_argument("arguments", nargs="?", default="{}", help="JSON object (default: {})")
    p.add_argument("--workspace", metavar="DIR", help="workspace (default: .)")
    p.set_defaults(func=cmd_call)


def load_installed(workspace: Path, state_dir: Path) -> tuple[list[Any], list[Any]]:
    """Every installed plugin (workspace `.kite/plugins` first, then the user's plugin dir),
    loaded with the host's trust and limits; failures are returned, not raised."""
    from agent_core.plugins.plugin import PluginHost, load_all
    from agent_core.plugins.sandbox import UrllibHttpClient

    trust, limits = load_plugin_host_config()
    host = PluginHost(
        trust=trust,
        limits=limits,
        scratch_root=state_dir / "plugin-scratch",
        http=UrllibHttpClient(),
    )
    return load_all([workspace / WORKSPACE_PLUGINS, state_dir / "plugins"], host)
