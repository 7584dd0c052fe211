"""The Kite bridge: `kite serve` in a subprocess, one `KiteClient` paired once, warm connection.

Measured: `fs.read` of a 4 KiB text file (round trip), `exec.run ["true"]` (round trip), and
`fs.read {"binary": true}` of the big random file (MiB/s, bytes checked against their sha256
after the clock stops). With `--profile DIR` only the `fs.read` loop runs, with the bridge under
cProfile and the client's loop profiled too; both profiles and their top functions land in DIR.
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import json
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.client import KiteClient
from agent_core.pairing import parse_link, websocket_url
from agent_core.rpc.frames import dumps, encode_envelope
from agent_core.transport.ws_cpython import open_websocket
from bench import (
    BIG_NAME,
    MIB,
    REPO,
    SMALL_NAME,
    BenchContext,
    Row,
    Service,
    latency_row,
    throughput_row,
    time_calls,
    time_interleaved,
)
from bench.echo import echo_connection

TAG = 16  # AES-GCM tag on every Noise transport message
CLIENT_NAME = "kite-bench"


def _serve_argv(ctx: BenchContext, state_dir: Path) -> list[str]:
    prefix = [sys.executable]
    if ctx.profile_dir is not None:
        prefix += ["-m", "cProfile", "-o", str(ctx.profile_dir / "bridge.prof")]
    return [
        *prefix,
        "-m",
        "bridge",
        "serve",
        "--json",
        "--no-pair",
        "--port",
        "0",
        "--workspace",
        str(ctx.fixture.workspace),
        "--state-dir",
        str(state_dir),
    ]


def _pair_link(state_dir: Path) -> str:
    """A fresh pairing link from `kite pair --json`, as a user would get it."""
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "pair", "--json", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout)["url"]


async def connect_paired(link_url: str) -> KiteClient:
    """Pair a new device key with the link, then open a normal `kite.v1` connection with it."""
    link = parse_link(link_url)
    ws_url = websocket_url(link.base_url)
    backend = CpythonCryptoBackend()
    static = await backend.generate_keypair()
    pairing = await KiteClient.handshake(
        await open_websocket(ws_url, SUBPROTOCOL_PAIR),
        backend,
        mode=SUBPROTOCOL_PAIR,
        static=static,
        host_key=link.host_key,
        psk=link.secret,
        info={"name": CLIENT_NAME},
    )
    await pairing.close()
    return await KiteClient.handshake(
        await open_websocket(ws_url, SUBPROTOCOL_CONNECT),
        backend,
        mode=SUBPROTOCOL_CONNECT,
        static=static,
        host_key=link.host_key,
        info={"name": CLIENT_NAME},
    )


def _last_refusal(state_dir: Path) -> str:
    """The outcome of the last refused handshake in the bridge's audit log, if any."""
    try:
        lines = (state_dir / "audit.log").read_text().splitlines()
    except OSError:
        return "(no audit log)"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("op") in ("pair", "connect") and entry.get("outcome") != "ok":
            return f"{entry['op']}: {entry.get('outcome')}"
    return "(no refusal logged)"


def _frame_sizes(req_id: int, result: dict[str, Any]) -> dict[str, int]:
    """Encrypted sizes of one `fs.read` request and its response (JSON is canonical here)."""
    request = encode_envelope({"id": req_id, "op": "fs.read", "args": {"path": SMALL_NAME}})[0]
    response = dumps({"id": req_id, "ok": True, "result": result})
    return {"request": len(request) + TAG, "response": len(response) + TAG}


def _write_profile(prof: cProfile.Profile | pstats.Stats, path: Path, top: int = 40) -> str:
    """Dump a profile and a text summary (by total and by own time) next to it."""
    stats = prof if isinstance(prof, pstats.Stats) else pstats.Stats(prof)
    if not isinstance(prof, pstats.Stats):
        prof.dump_stats(path)
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    path.with_suffix(".txt").write_text(text)
    return text


async def bench_bridge(ctx: BenchContext) -> list[Row]:
    """Pair once, then time `fs.read`, `exec.run` and a bulk binary `fs.read`.

    Profiling (`ctx.profile_dir`) runs only the `fs.read` loop, so the profiles show the
    latency-critical path alone (and its figures, slowed by cProfile, are marked as such).
    """
    state_dir = ctx.tmp / "kite-state"
    server = Service("kite-serve", _serve_argv(ctx, state_dir), ctx.tmp)
    info = server.first_json()
    ctx.info["kite_serve"] = {k: info[k] for k in ("url", "version") if k in info}
    rows: list[Row] = []
    try:
        try:
            client = await connect_paired(_pair_link(state_dir))
        except (ConnectionError, OSError) as exc:
            raise RuntimeError(
                f"pairing/connecting failed: {exc}; the bridge says: {_last_refusal(state_dir)}"
            ) from exc
        try:
            rows.append(await _fs_read_rtt(ctx, client))
            if ctx.profile_dir is None:
                rows.append(await _exec_rtt(ctx, client))
                rows.append(await _throughput(ctx, client))
        finally:
            await client.close()
    finally:
        status = server.stop()
        if ctx.profile_dir is not None:
            prof = ctx.profile_dir / "bridge.prof"
            if prof.exists():
                _write_profile(pstats.Stats(str(prof)), prof)
                ctx.log(f"bridge profile: {prof.with_suffix('.txt')}")
            else:
                ctx.log(f"no bridge profile written (bridge exit status {status})")
    return rows


async def _fs_read_rtt(ctx: BenchContext, client: KiteClient) -> Row:
    fx = ctx.fixture
    first = await client.call("fs.read", {"path": SMALL_NAME})
    if first.get("content") != fx.small_text or first.get("sha256") != fx.small_sha256:
        raise RuntimeError(f"fs.read returned the wrong content: {str(first)[:200]}")
    ctx.shared["kite_fs_read_frames"] = _frame_sizes(10_000, first)
    ctx.info["kite_fs_read_frames"] = ctx.shared["kite_fs_read_frames"]

    args = {"path": SMALL_NAME}

    async def read_small() -> None:
        await client.call("fs.read", args)

    if ctx.profile_dir is None and ctx.shared.get("interleave_echo"):
        # The echo baseline is timed here, in alternating blocks with this loop (see
        # `time_interleaved`); bench_echo reports its samples.
        async with echo_connection(ctx) as (_ws, round_trip):
            both = await time_interleaved(
                {"kite": read_small, "echo": round_trip}, ctx.n_rtt, ctx.warmup_rtt
            )
        samples = both["kite"]
        ctx.shared["echo_rtt_samples"] = both["echo"]
        note = "Noise XX session, warm connection, interleaved with the echo"
    elif ctx.profile_dir is None:
        samples = await time_calls(read_small, ctx.n_rtt, ctx.warmup_rtt)
        note = "Noise XX session, warm connection"
    else:
        prof = cProfile.Profile()
        prof.enable()
        try:
            samples = await time_calls(read_small, ctx.n_rtt, ctx.warmup_rtt)
        finally:
            prof.disable()
        _write_profile(prof, ctx.profile_dir / "client_fs_read.prof")
        ctx.log(f"client profile: {ctx.profile_dir / 'client_fs_read.txt'}")
        note = "UNDER cProfile (client and bridge): not comparable"
    return latency_row("kite", "fs_read_rtt", "fs.read 4 KiB RTT", samples, note)


async def _exec_rtt(ctx: BenchContext, client: KiteClient) -> Row:
    argv = {"argv": ["true"]}
    done = await client.call("exec.run", argv)
    if done.get("exit_code") != 0:
        raise RuntimeError(f"exec.run true: {done}")

    async def run_true() -> None:
        await client.call("exec.run", argv)

    samples = await time_calls(run_true, ctx.n_exec, ctx.warmup_exec)
    return latency_row("kite", "exec_rtt", "exec.run true RTT", samples, "argv, no shell")


def _collect_into(chunks: list[bytes]) -> Callable[[bytes, bool], None]:
    """An `on_chunk` callback that only keeps the payloads (checked after the clock stops)."""
    append = chunks.append

    def on_chunk(payload: bytes, final: bool) -> None:
        append(payload)

    return on_chunk


async def _throughput(ctx: BenchContext, client: KiteClient) -> Row:
    fx = ctx.fixture
    times: list[float] = []
    for _ in range(ctx.repeats):
        chunks: list[bytes] = []
        t0 = time.perf_counter()
        result = await client.call(
            "fs.read",
            {"path": BIG_NAME, "binary": True},
            on_chunk=_collect_into(chunks),
        )
        times.append(time.perf_counter() - t0)
        data = b"".join(chunks)
        chunks.clear()
        if len(data) != fx.big_size or hashlib.sha256(data).hexdigest() != fx.big_sha256:
            raise RuntimeError(f"binary fs.read delivered {len(data)} bytes that do not match")
        if result.get("sha256") not in (None, fx.big_sha256):
            raise RuntimeError(f"binary fs.read reported sha256 {result.get('sha256')}")
        del data
    return throughput_row(
        "kite",
        "read_bulk",
        f"fs.read binary {fx.big_size // MIB} MiB",
        fx.big_size,
        times,
        "sha256 verified after each run",
    )
