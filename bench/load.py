"""Load: many concurrent paired devices against one real bridge process, on loopback.

Each device is agent_core's own client (`KiteClient`) on its own WebSocket, paired for real
(XXpsk3 with a single-use secret minted through the device registry, as `kite pair` does; later
rounds reconnect with XX and the registered key). Every device runs a fixed plan of operations,
one at a time, all devices at once:

* `fs.read` of a 4 KiB corpus file (content checked);
* an append to its own file: read-modify-write guarded by `if_match` (never conflicts);
* an append to a file shared with the other devices of its group: `fs.read`, then `fs.write`
  with `if_match`; on `ECONFLICT` (someone else got there first) back off and redo both;
* `fs.grep` over the corpus (match count checked);
* a short `exec.run` (`echo <token>`, output checked).

The oracle: every device remembers the records it believes committed (the write returned ok).
After all rounds, its own file must hold exactly its records in order, and each shared file
exactly the records its devices committed, each once: no lost and no duplicated write. Anything
else (an error, a wrong read, a closed channel) is counted as an error.

Between rounds every device disconnects; the bridge's RSS, open file descriptors and child
processes are read from /proc. Rounds after the first must not grow RSS beyond `RSS_SLACK_KIB`
and must return to the same descriptors and children (no leak per connection or command).

    python -m bench.load                 200 devices x 36 ops x 3 rounds, prints the table
    python -m bench.load --quick         the size the test uses (tests/test_load.py)
    python -m bench.load --devices 50 --ops 20 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_core.channel.crypto import KeyPair
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT, SUBPROTOCOL_PAIR
from agent_core.client import KiteClient
from agent_core.rpc.errors import ECONFLICT, RpcError
from agent_core.transport.ws_cpython import open_websocket

# RSS may grow by this much from the end of round 1 to the end of the last round (allocator
# arenas, SQLite page cache settling); a per-connection leak of a few KiB x 200 devices x
# rounds goes past it.
RSS_SLACK_KIB = 12 * 1024
CORPUS_FILES = 40
CORPUS_LINES = 60  # lines per corpus file; every 10th carries a needle
CALL_TIMEOUT_S = 120.0
# The operation mix, cycled per device (offset by its index, so all kinds run at once).
PLAN = (
    "read",
    "own",
    "grep",
    "read",
    "exec",
    "own",
    "read",
    "shared",
    "own",
    "grep",
    "exec",
    "read",
)
PAIR_WAVE = 25  # devices paired per wave of pairing secrets


@dataclass
class LoadConfig:
    devices: int = 200
    ops_per_device: int = 12
    rounds: int = 3
    shared_files: int = 25


def _corpus_text(j: int) -> str:
    lines = []
    for n in range(CORPUS_LINES):
        if n % 10 == 0:
            lines.append(f"needle-{j}-{n} the quick brown fox")
        else:
            lines.append(f"file {j} line {n} " + "lorem ipsum dolor sit amet " * 2)
    return "\n".join(lines) + "\n"


def make_workspace(ws: Path, cfg: LoadConfig) -> None:
    (ws / "corpus").mkdir(parents=True, exist_ok=True)
    (ws / "dev").mkdir(exist_ok=True)
    (ws / "shared").mkdir(exist_ok=True)
    for j in range(CORPUS_FILES):
        (ws / "corpus" / f"f{j}.txt").write_text(_corpus_text(j))
    for i in range(cfg.devices):
        (ws / "dev" / f"{i}.log").write_text("")
    for g in range(cfg.shared_files):
        (ws / "shared" / f"{g}.log").write_text("")


GREP_EXPECTED = CORPUS_FILES * (CORPUS_LINES // 10)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Device:
    index: int
    static: KeyPair
    own_text: str = ""
    own_sha: str = _sha("")
    own_records: list[str] = field(default_factory=list)
    shared_records: list[str] = field(default_factory=list)
    client: KiteClient | None = None
    ops_done: int = 0


@dataclass
class RoundStats:
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    conflicts: int = 0
    ops: int = 0
    wall_s: float = 0.0
    connect_s: float = 0.0
    rss_kib: int = 0
    fds: int = 0
    children: int = 0


@dataclass
class LoadReport:
    cfg: LoadConfig
    rounds: list[RoundStats]
    rss_start_kib: int
    oracle_errors: list[str]
    registration: str
    devices: list[Device] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [e for r in self.rounds for e in r.errors] + self.oracle_errors

    def latencies(self, kind: str | None = None) -> list[float]:
        out: list[float] = []
        for r in self.rounds:
            for k, v in r.latencies_ms.items():
                if kind is None or k == kind:
                    out += v
        return out

    @property
    def rss_growth_kib(self) -> int:
        """From the end of round 1 to the end of the last round."""
        return self.rounds[-1].rss_kib - self.rounds[0].rss_kib


# -- /proc ----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def child_count(pid: int) -> int:
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            n += len(Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return n


# -- the devices ------------------------------------------------------------------------------


BACKEND = CpythonCryptoBackend()


async def _connect(ws_url: str, dev: Device, host_key: bytes, psk: bytes | None) -> None:
    mode = SUBPROTOCOL_PAIR if psk is not None else SUBPROTOCOL_CONNECT
    transport = await open_websocket(ws_url, mode)
    dev.client = await KiteClient.handshake(
        transport,
        BACKEND,
        mode=mode,
        static=dev.static,
        host_key=host_key,
        psk=psk,
        info={"name": f"load device {dev.index}"},
    )


class _Run:
    def __init__(self, stats: RoundStats, cfg: LoadConfig, round_no: int) -> None:
        self.stats = stats
        self.cfg = cfg
        self.round_no = round_no

    def _lat(self, kind: str, t0: float) -> None:
        self.stats.latencies_ms.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)

    async def call(self, dev: Device, kind: str, op: str, args: dict[str, Any], **kw: Any) -> Any:
        assert dev.client is not None
        t0 = time.perf_counter()
        res = await dev.client.call(op, args, timeout=CALL_TIMEOUT_S, **kw)
        self._lat(kind, t0)
        self.stats.ops += 1
        return res

    async def device(self, dev: Device) -> None:
        rng = random.Random(dev.index * 1000 + self.round_no)
        for k in range(self.cfg.ops_per_device):
            kind = PLAN[(dev.index + k) % len(PLAN)]
            tag = f"r{self.round_no}-d{dev.index}-k{k}"
            try:
                await getattr(self, f"op_{kind}")(dev, tag, rng)
            except Exception as exc:  # every failure is an error of the run, with its cause
                self.stats.errors.append(f"device {dev.index} {kind} {tag}: {exc!r}"[:300])
            dev.ops_done += 1

    async def op_read(self, dev: Device, tag: str, rng: random.Random) -> None:
        j = rng.randrange(CORPUS_FILES)
        res = await self.call(dev, "fs.read", "fs.read", {"path": f"corpus/f{j}.txt"})
        if res["content"] != _corpus_text(j):
            raise AssertionError(f"corpus/f{j}.txt read back wrong")

    async def op_grep(self, dev: Device, tag: str, rng: random.Random) -> None:
        res = await self.call(
            dev, "fs.grep", "fs.grep", {"pattern": r"needle-\d+-\d+", "path": "corpus"}
        )
        if len(res["matches"]) != GREP_EXPECTED or res.get("truncated"):
            raise AssertionError(f"grep found {len(res['matches'])}, expected {GREP_EXPECTED}")

    async def op_exec(self, dev: Device, tag: str, rng: random.Random) -> None:
        out: list[str] = []
        res = await self.call(
            dev,
            "exec.run",
            "exec.run",
            {"argv": ["echo", tag], "timeout_s": 60},
            on_event=lambda ev, data: out.append(data) if ev == "stdout" else None,
        )
        if res["exit_code"] != 0 or "".join(out) != tag + "\n":
            raise AssertionError(f"exec gave {res['exit_code']} {''.join(out)!r}")

    async def op_own(self, dev: Device, tag: str, rng: random.Random) -> None:
        content = dev.own_text + tag + "\n"
        res = await self.call(
            dev,
            "fs.write (own, if_match)",
            "fs.write",
            {"path": f"dev/{dev.index}.log", "content": content, "if_match": dev.own_sha},
        )
        if res["sha256"] != _sha(content):
            raise AssertionError("own write: wrong hash back")
        dev.own_text, dev.own_sha = content, res["sha256"]
        dev.own_records.append(tag)

    async def op_shared(self, dev: Device, tag: str, rng: random.Random) -> None:
        path = f"shared/{dev.index % self.cfg.shared_files}.log"
        t0 = time.perf_counter()
        for attempt in range(1, 500):
            cur = await self.call(dev, "fs.read (shared)", "fs.read", {"path": path})
            content = cur["content"] + tag + "\n"
            try:
                await self.call(
                    dev,
                    "fs.write (shared, if_match)",
                    "fs.write",
                    {"path": path, "content": content, "if_match": cur["sha256"]},
                )
            except RpcError as exc:
                if exc.code != ECONFLICT:
                    raise
                self.stats.conflicts += 1
                await asyncio.sleep(rng.uniform(0, 0.005 * min(attempt, 20)))
                continue
            dev.shared_records.append(tag)
            self._lat("shared append (CAS, with retries)", t0)
            return
        raise AssertionError("shared append: gave up after 500 conflicts")


async def _round(
    ws_url: str,
    devices: list[Device],
    host_key: bytes,
    cfg: LoadConfig,
    round_no: int,
    mint: Any,
) -> RoundStats:
    stats = RoundStats()
    t0 = time.perf_counter()
    if round_no == 0:
        for w in range(0, len(devices), PAIR_WAVE):
            wave = devices[w : w + PAIR_WAVE]
            psks = [mint() for _ in wave]
            await asyncio.gather(
                *(_connect(ws_url, d, host_key, p) for d, p in zip(wave, psks, strict=True))
            )
    else:
        await asyncio.gather(*(_connect(ws_url, d, host_key, None) for d in devices))
    stats.connect_s = time.perf_counter() - t0
    run = _Run(stats, cfg, round_no)
    t1 = time.perf_counter()
    await asyncio.gather(*(run.device(d) for d in devices))
    stats.wall_s = time.perf_counter() - t1
    for d in devices:
        if d.client is not None:
            if d.client.closed:
                stats.errors.append(f"device {d.index}: channel closed during the round")
            await d.client.close()
            d.client = None
    return stats


def _check_oracle(ws: Path, devices: list[Device], cfg: LoadConfig) -> list[str]:
    errors = []
    for d in devices:
        on_disk = (ws / "dev" / f"{d.index}.log").read_text().splitlines()
        if on_disk != d.own_records:
            errors.append(
                f"dev/{d.index}.log: {len(on_disk)} records on disk, "
                f"{len(d.own_records)} committed by the device"
            )
    for g in range(cfg.shared_files):
        on_disk = (ws / "shared" / f"{g}.log").read_text().splitlines()
        committed = [
            r for d in devices if d.index % cfg.shared_files == g for r in d.shared_records
        ]
        if sorted(on_disk) != sorted(committed):
            lost = set(committed) - set(on_disk)
            dup = len(on_disk) - len(set(on_disk))
            extra = set(on_disk) - set(committed)
            errors.append(
                f"shared/{g}.log: lost {len(lost)}, duplicated {dup}, unknown {len(extra)}"
            )
    return errors


async def _settle(pid: int, want_fds: int | None, timeout: float = 30) -> None:
    """Wait until the bridge has closed the round's connections (its fd count stops falling)."""
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    while time.monotonic() < deadline:
        n = fd_count(pid)
        if want_fds is not None and n == want_fds:
            return
        stable = stable + 1 if n == last else 0
        if want_fds is None and stable >= 10:
            return
        last = n
        await asyncio.sleep(0.1)


def run_load(cfg: LoadConfig, workdir: Path, log: Any = None) -> LoadReport:
    """Start a bridge in `workdir`, run `cfg.rounds` rounds, stop it; return what was measured."""
    from bridge.devices import Registry
    from tests.harness import BridgeProcess

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    ws, state = workdir / "ws", workdir / "state"
    make_workspace(ws, cfg)
    bridge = BridgeProcess(ws, state, "--max-connections", str(cfg.devices + 16))
    try:
        pid = bridge.proc.pid
        rss0 = rss_kib(pid)
        registry = Registry(state)  # what `kite pair` uses: the bridge reads secrets from it
        host_key = _host_key(bridge)

        def mint() -> bytes:
            return registry.new_pairing_secret(120)[0]

        async def main() -> list[RoundStats]:
            devices = [Device(i, await BACKEND.generate_keypair()) for i in range(cfg.devices)]
            out: list[RoundStats] = []
            fds_after_first: int | None = None
            for r in range(cfg.rounds):
                stats = await _round(bridge.ws_url, devices, host_key, cfg, r, mint)
                await _settle(pid, fds_after_first)
                stats.rss_kib = rss_kib(pid)
                stats.fds = fd_count(pid)
                stats.children = child_count(pid)
                if fds_after_first is None:
                    fds_after_first = stats.fds
                say(
                    f"round {r + 1}/{cfg.rounds}: {stats.ops} ops in {stats.wall_s:.1f} s "
                    f"(connect {stats.connect_s:.1f} s), {len(stats.errors)} errors, "
                    f"{stats.conflicts} CAS conflicts, RSS {stats.rss_kib / 1024:.1f} MiB, "
                    f"{stats.fds} fds, {stats.children} children"
                )
                out.append(stats)
            report_devices.extend(devices)
            return out

        report_devices: list[Device] = []
        rounds = asyncio.run(main())
        registry.close()
        oracle = _check_oracle(ws, report_devices, cfg)
    finally:
        bridge.stop()
    return LoadReport(
        cfg,
        rounds,
        rss0,
        oracle,
        registration=f"paired over the wire (XXpsk3), secrets minted {PAIR_WAVE} at a time "
        "through the device registry as `kite pair` does",
        devices=report_devices,
    )


def _host_key(bridge: Any) -> bytes:
    from agent_core.pairing import parse_link

    return parse_link(bridge.pair_url()).host_key


# -- the benchmark rows -----------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def rows(report: LoadReport) -> list[dict[str, Any]]:
    cfg = report.cfg
    base = f"{cfg.devices} devices"
    out: list[dict[str, Any]] = []
    all_lat = report.latencies()
    wall = sum(r.wall_s for r in report.rounds)
    ops = sum(r.ops for r in report.rounds)
    out.append({"name": f"load: throughput, {base}", "value": round(ops / wall, 1),
                "unit": "ops/s", "better": "higher",
                "note": f"{ops} ops in {cfg.rounds} rounds"})  # fmt: skip
    out.append({"name": "load: latency p50, all ops", "value": round(_pct(all_lat, 0.5), 2),
                "unit": "ms"})  # fmt: skip
    out.append({"name": "load: latency p99, all ops", "value": round(_pct(all_lat, 0.99), 2),
                "unit": "ms"})  # fmt: skip
    kinds = sorted({k for r in report.rounds for k in r.latencies_ms})
    for kind in kinds:
        lat = report.latencies(kind)
        out.append({"name": f"load: {kind} p50", "value": round(_pct(lat, 0.5), 2), "unit": "ms",
                    "note": f"p99 {_pct(lat, 0.99):.1f} ms, n={len(lat)}"})  # fmt: skip
    out.append({"name": "load: errors", "value": len(report.errors), "unit": "count",
                "note": "ops failed + oracle mismatches (lost/duplicated writes)"})  # fmt: skip
    conflicts = sum(r.conflicts for r in report.rounds)
    out.append({"name": "load: CAS conflicts (retried)", "value": conflicts, "unit": "count",
                "note": "ECONFLICT on shared files, expected"})  # fmt: skip
    out.append({"name": "load: bridge RSS at start", "value": round(report.rss_start_kib / 1024, 1),
                "unit": "MiB"})  # fmt: skip
    for i, r in enumerate(report.rounds):
        out.append({"name": f"load: bridge RSS after round {i + 1}",
                    "value": round(r.rss_kib / 1024, 1), "unit": "MiB"})  # fmt: skip
    growth = round(report.rss_growth_kib / 1024, 2)
    out.append({"name": "load: RSS growth, round 1 to last", "value": growth, "unit": "MiB",
                "note": f"slack {RSS_SLACK_KIB // 1024} MiB"})  # fmt: skip
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The bench suite entry point (`python -m bench`): rows for the unified table."""
    cfg = LoadConfig(ops_per_device=12 if quick else 36, rounds=3)
    with tempfile.TemporaryDirectory(prefix="kite-load-") as tmp:
        report = run_load(cfg, Path(tmp))
    return rows(report)


def _print(report: LoadReport) -> None:
    print(f"{report.cfg.devices} devices, {report.cfg.ops_per_device} ops each, "
          f"{report.cfg.rounds} rounds; {report.registration}")  # fmt: skip
    for row in rows(report):
        note = f"  ({row['note']})" if row.get("note") else ""
        print(f"  {row['name']:<52} {row['value']:>10} {row['unit']}{note}")
    for e in report.errors[:20]:
        print("  ERROR", e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the test's size: 12 ops per device")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--ops", type=int, default=None, help="ops per device (default 36)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    a = p.parse_args(argv)
    ops = a.ops if a.ops is not None else (12 if a.quick else 36)
    cfg = LoadConfig(devices=a.devices, ops_per_device=ops, rounds=a.rounds)
    tmp = Path(tempfile.mkdtemp(prefix="kite-load-"))
    try:
        report = run_load(cfg, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps(rows(report), indent=2))
    else:
        _print(report)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
