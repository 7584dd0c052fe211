"""Plugin manifests: parse and validate, pin the module's sha256, sign and verify (Ed25519).

A manifest is a JSON object with Extism's fields (`wasm`, `memory`, `allowed_hosts`,
`allowed_paths`, `timeout_ms`, `config`) and Kite's (`name`, `version`, `description`, `tools`,
`run_on`, `signature`). `to_extism()` gives the part Extism SDKs accept.

The signature covers the canonical JSON of the whole manifest except `signature` itself, behind a
domain-separation prefix; since the manifest pins every module's sha256, the signature covers the
code too. Verification is `verify_signature()`: the pure-Python Ed25519 verifier by default (it runs
anywhere), replaceable through `set_verifier()` (e.g. WebCrypto in the browser). Signing needs the
private key and `cryptography`, so it lives in `sign_manifest()` and imports it on call.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_core.plugins import ed25519
from agent_core.plugins.sandbox import PluginError

MANIFEST_FILE = "kite-plugin.json"
SIGNING_CONTEXT = b"kite-plugin-manifest-v1\n"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
TOOL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")
EXTISM_FIELDS = ("wasm", "memory", "config", "allowed_hosts", "allowed_paths", "timeout_ms")
KITE_FIELDS = ("name", "version", "description", "tools", "run_on", "signature", "kite")
MEMORY_FIELDS = ("max_pages", "max_http_response_bytes", "max_var_bytes")

Verifier = Callable[[bytes, bytes, bytes], bool]
_verifier: Verifier = ed25519.verify


def set_verifier(verifier: Verifier) -> None:
    """Replace the Ed25519 verifier (`verify(public_key, message, signature) -> bool`)."""
    global _verifier
    _verifier = verifier


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    return _verifier(public_key, message, signature)


def key_id(public_key: bytes) -> str:
    """How a publisher key is written in manifests and in the host config."""
    return "ed25519:" + base64.b64encode(public_key).decode()


def parse_key_id(text: str) -> bytes:
    """The 32 raw bytes of an `ed25519:<base64>` key (also accepts bare base64)."""
    raw = text.strip()
    if raw.startswith("ed25519:"):
        raw = raw[len("ed25519:") :]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise PluginError(f"not an Ed25519 public key: {text!r}", "invalid")
    return key


@dataclass(frozen=True)
class ToolDef:
    """A tool the plugin offers the agent: `function` is the export that implements it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    function: str


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. `raw` is the JSON object as loaded (what the signature covers)."""

    raw: dict[str, Any]
    base_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def version(self) -> str:
        return self.raw.get("version", "0.0.0")

    @property
    def description(self) -> str:
        return self.raw.get("description", "")

    @property
    def run_on(self) -> str:
        return self.raw.get("run_on", "device")

    @property
    def config(self) -> dict[str, str]:
        return dict(self.raw.get("config") or {})

    @property
    def allowed_hosts(self) -> list[str]:
        return list(self.raw.get("allowed_hosts") or [])

    @property
    def allowed_paths(self) -> dict[str, str]:
        return dict(self.raw.get("allowed_paths") or {})

    @property
    def timeout_ms(self) -> int | None:
        return self.raw.get("timeout_ms")

    @property
    def memory(self) -> dict[str, int]:
        return dict(self.raw.get("memory") or {})

    @property
    def wasm_hash(self) -> str:
        return self.raw["wasm"][0]["hash"].lower()

    @property
    def signature(self) -> dict[str, str] | None:
        return self.raw.get("signature")

    @property
    def tools(self) -> list[ToolDef]:
        return [
            ToolDef(
                t["name"],
                t.get("description", ""),
                t.get("input_schema") or {"type": "object"},
                t.get("function", t["name"]),
            )
            for t in self.raw.get("tools") or []
        ]

    # -- module ------------------------------------------------------------------------------

    def load_wasm(self) -> bytes:
        """The module's bytes, refused unless their sha256 equals the pinned `hash`."""
        entry = self.raw["wasm"][0]
        if "data" in entry:
            try:
                data = base64.b64decode(entry["data"], validate=True)
            except (binascii.Error, ValueError):
                msg = f"{self.name}: wasm data is not valid base64"
                raise PluginError(msg, "invalid") from None
        else:
            path = Path(entry["path"])
            if not path.is_absolute():
                if self.base_dir is None:
                    raise PluginError(f"{self.name}: relative wasm path without a base", "invalid")
                path = self.base_dir / path
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise PluginError(
                    f"{self.name}: cannot read {path}: {exc.strerror}", "load"
                ) from None
        check_hash(self.name, data, self.wasm_hash)
        return data

    # -- signature ---------------------------------------------------------------------------

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.raw)

    def verify(self) -> bytes | None:
        """The publisher key if the manifest is signed and the signature is valid; None if it
        is unsigned. Raises `PluginError` (kind "signature") for an invalid signature."""
        sig = self.signature
        if sig is None:
            return None
        try:
            key = parse_key_id(sig["key"])
            value = base64.b64decode(sig["sig"], validate=True)
        except (KeyError, TypeError, binascii.Error, ValueError, PluginError):
            raise PluginError(f"{self.name}: malformed signature block", "signature") from None
        if not verify_signature(key, self.signed_bytes(), value):
            raise PluginError(
                f"{self.name}: the manifest's signature does not match its contents "
                f"(signed by {key_id(key)}); it was modified after signing or signed by "
                "another key",
                "signature",
            )
        return key

    def to_extism(self, wasm_path: str | None = None) -> dict[str, Any]:
        """The Extism-compatible manifest (Kite's own fields removed)."""
        out = {k: copy.deepcopy(self.raw[k]) for k in EXTISM_FIELDS if k in self.raw}
        if wasm_path is not None:
            out["wasm"] = [{"path": wasm_path, "hash": self.wasm_hash}]
        return out


def check_hash(name: str, data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise PluginError(
            f"{name}: the module's sha256 is {actual}, but the manifest pins {expected}; "
            "refusing to load a module that is not the one the manifest describes",
            "hash",
        )


def signed_bytes(raw: dict[str, Any]) -> bytes:
    body = {k: v for k, v in raw.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SIGNING_CONTEXT + canonical.encode("utf-8")


def _fail(msg: str) -> PluginError:
    return PluginError(f"invalid plugin manifest: {msg}", "invalid")


def validate(raw: Any) -> dict[str, Any]:
    """Check types and values of every known field; unknown top-level fields are refused (a
    typo such as `alowed_hosts` must not silently drop a restriction)."""
    if not isinstance(raw, dict):
        raise _fail("not a JSON object")
    unknown = set(raw) - set(EXTISM_FIELDS) - set(KITE_FIELDS)
    if unknown:
        raise _fail(f"unknown field(s) {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail("'name' must be lowercase letters, digits, '_' or '-' (max 64)")
    for key in ("version", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise _fail(f"'{key}' must be a string")
    wasm = raw.get("wasm")
    if not isinstance(wasm, list) or len(wasm) != 1 or not isinstance(wasm[0], dict):
        raise _fail("'wasm' must list exactly one module")
    entry = wasm[0]
    if set(entry) - {"path", "data", "hash", "name"}:
        raise _fail("a wasm entry has fields other than path/data/hash/name")
    if ("path" in entry) == ("data" in entry):
        raise _fail("a wasm entry needs exactly one of 'path' or 'data'")
    if "path" in entry and not isinstance(entry["path"], str):
        raise _fail("'wasm[0].path' must be a string")
    h = entry.get("hash")
    if not isinstance(h, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", h):
        raise _fail("'wasm[0].hash' must be the module's sha256 in hex (run `kite plugin build`)")
    mem = raw.get("memory", {})
    if not isinstance(mem, dict) or set(mem) - set(MEMORY_FIELDS):
        raise _fail(f"'memory' may only have {', '.join(MEMORY_FIELDS)}")
    for k, v in mem.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise _fail(f"'memory.{k}' must be a non-negative integer")
    cfg = raw.get("config", {})
    if not isinstance(cfg, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in cfg.items()
    ):
        raise _fail("'config' must map strings to strings")
    hosts = raw.get("allowed_hosts")
    if hosts is not None and (
        not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts)
    ):
        raise _fail("'allowed_hosts' must be a list of host names or patterns")
    paths = raw.get("allowed_paths")
    if paths is not None and (
        not isinstance(paths, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in paths.items())
    ):
        raise _fail("'allowed_paths' must map scratch-relative paths to guest paths")
    t = raw.get("timeout_ms")
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t <= 0):
        raise _fail("'timeout_ms' must be a positive integer")
    if raw.get("run_on", "device") not in ("device", "host"):
        raise _fail("'run_on' must be 'device' or 'host'")
    tools = raw.get("tools", [])
    if not isinstance(tools, list):
        raise _fail("'tools' must be a list")
    seen = set()
    for tool in tools:
        if not isinstance(tool, dict) or set(tool) - {
            "name",
            "description",
            "input_schema",
            "function",
        }:
            raise _fail("each tool has name, description, input_schema and optional function")
        if not isinstance(tool.get("name"), str) or not TOOL_RE.match(tool["name"]):
            raise _fail("a tool name must be letters, digits, '_' or '-' (max 64)")
        if tool["name"] in seen:
            raise _fail(f"tool {tool['name']!r} is listed twice")
        seen.add(tool["name"])
        if not isinstance(tool.get("description", ""), str):
            raise _fail("a tool description must be a string")
        schema = tool.get("input_schema", {"type": "object"})
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise _fail(f"tool {tool['name']!r}: input_schema must be a JSON schema object")
        if not isinstance(tool.get("function", tool["name"]), str):
            raise _fail("a tool's function must be an export name")
    sig = raw.get("signature")
    if sig is not None and (not isinstance(sig, dict) or set(sig) != {"key", "sig"}):
        raise _fail('\'signature\' must be {"key": ..., "sig": ...}')
    return raw


def parse_manifest(text: str | bytes, base_dir: Path | None = None) -> Manifest:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise _fail(f"not JSON ({exc})") from None
    return Manifest(validate(raw), base_dir)


def load_manifest(path: Path) -> Manifest:
    """Load `path` (a manifest file, or a directory holding kite-plugin.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PluginError(f"cannot read {path}: {exc.strerror}", "load") from None
    return parse_manifest(text, path.parent.resolve())


def sign_manifest(raw: dict[str, Any], private_key: bytes) -> dict[str, Any]:
    """A copy of `raw` with a `signature` by the 32-byte Ed25519 seed `private_key` (CPython,
    needs `cryptography`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(private_key)
    public = key.public_key().public_bytes_raw()
    body = {k: v for k, v in raw.items() if k != "signature"}
    sig = key.sign(signed_bytes(body))
    return {**body, "signature": {"key": key_id(public), "sig": base64.b64encode(sig).decode()}}


@dataclass(frozen=True)
class TrustPolicy:
    """Who the host trusts: publisher keys, and plugin names the user trusts unsigned.

    Comes from the host owner's config only (`[plugins]` in `<config dir>/bridge.toml`), never from
    a workspace: a cloned repository must not be able to vouch for its own plugins.
    """

    trusted_keys: frozenset[bytes] = frozenset()
    trusted_unsigned: frozenset[str] = frozenset()

    def check(self, manifest: Manifest) -> str:
        """Return why the plugin is trusted, or raise `PluginError` (signature/untrusted)."""
        key = manifest.verify()
        if key is not None and key in self.trusted_keys:
            return f"signed by trusted key {key_id(key)}"
        if manifest.name in self.trusted_unsigned:
            return "trusted by name" + (" (signed by an unlisted key)" if key else " (unsigned)")
        if key is not None:
            raise PluginError(
                f"{manifest.name}: signed by {key_id(key)}, which is not a trusted publisher key "
                f"(trust it with `kite plugin trust --key {key_id(key)}`)",
                "untrusted",
            )
        raise PluginError(
            f"{manifest.name}: the plugin is unsigned and not trusted; trust it by name with "
            f"`kite plugin trust {manifest.name}` or sign it with a trusted key",
            "untrusted",
        )
