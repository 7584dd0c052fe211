"""Baseline (b): OpenSSH. A private `sshd` on 127.0.0.1 and a random port, and asyncssh.

The server gets its own config, host key, authorized key and pid file in the scratch dir and
runs in the foreground (`sshd -D -e -f CONFIG`); it never touches the system's sshd. The client
(asyncssh, a Python client like Kite's) keeps one warm connection and measures:

* SFTP open + read + close of the 4 KiB file (what `fs.read` does in one request);
* `conn.run("true")` (one exec channel per call, like `exec.run`);
* a download of the big file, best of: asyncssh `sftp.get` to a file, asyncssh in-memory
  `read()` (parallel requests), and the `sftp` command line client (connection setup timed
  separately and subtracted, so all three are "warm").
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    MIB,
    BenchContext,
    Row,
    Service,
    Skipped,
    latency_row,
    throughput_row,
    time_calls,
)

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")


def _find_sshd() -> str:
    for path in (shutil.which("sshd"), *SSHD_CANDIDATES):
        if path and os.access(path, os.X_OK):
            return os.path.abspath(path)  # sshd re-executes itself: it needs an absolute path
    raise Skipped("sshd not found (install openssh-server; `./dev bench` does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise Skipped("ssh-keygen not found (install openssh-client)")
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "kite-bench", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


class PrivateSshd:
    """A throwaway sshd: key-only login for one fresh key, internal-sftp, loopback only."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "sshd"
        self.dir.mkdir(mode=0o700)
        self.user = getpass.getuser()
        self.port = 0
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.service: Service | None = None

    def _config(self) -> str:
        d = self.dir
        return "\n".join(
            [
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {self.host_key}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                f"PidFile {d / 'sshd.pid'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                # bash sources ~/.bashrc for `bash -c` under sshd unless it is a nested shell;
                # a heavy rc file (pyenv init, ...) would otherwise dominate every exec.
                "SetEnv SHLVL=1",
                "",
            ]
        )

    def start(self) -> None:
        sshd = _find_sshd()
        host_pub = _keygen(self.host_key)
        (self.dir / "authorized_keys").write_text(_keygen(self.client_key) + "\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        last_error = ""
        for _ in range(3):  # the free port may be taken between probe and bind: retry
            self.port = _free_port()
            config = self.dir / "sshd_config"
            config.write_text(self._config())
            check = subprocess.run(
                [sshd, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30
            )
            if check.returncode != 0:
                raise Skipped(f"sshd rejects its config: {check.stderr.strip()[:300]}")
            self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
            # sshd -D prints nothing on stdout when ready: probe the port instead.
            self.service = Service("sshd", [sshd, "-D", "-e", "-f", str(config)], self.dir)
            try:
                self._spawn_and_wait(self.service)
                return
            except RuntimeError as exc:
                last_error = str(exc)
        raise Skipped(f"sshd did not start: {last_error[:300]}")

    def _spawn_and_wait(self, service: Service, timeout: float = 10.0) -> None:
        proc = service.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        service.stop()
        raise RuntimeError(f"sshd exited or never answered: {service.stderr_tail()}")

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def cli_args(self) -> list[str]:
        """Options for the OpenSSH command line clients against this server."""
        return [
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-P",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ]


async def _connect(sshd: PrivateSshd) -> Any:
    import asyncssh

    return await asyncssh.connect(
        "127.0.0.1",
        port=sshd.port,
        username=sshd.user,
        client_keys=[str(sshd.client_key)],
        known_hosts=str(sshd.known_hosts),
        agent_path=None,
        config=None,
    )


def _sftp_cli_gets(
    sshd: PrivateSshd, src: str, dest: Path, repeats: int, extra: list[str]
) -> list[float]:
    """Download `src` `repeats` times in one `sftp -b` session; return each get's seconds.

    The batch brackets every `get` with `!date` (a local shell command), so the times are for
    a warm connection; the cost of one `!date` (measured between two of them) is subtracted.
    """
    sftp = shutil.which("sftp")
    if sftp is None:
        raise FileNotFoundError("the sftp command line client is not installed")
    stamp = "!date +%s.%N\n"
    batch = stamp + stamp + "".join(f'get "{src}" "{dest}"\n' + stamp for _ in range(repeats))
    batch_file = dest.with_name("sftp.batch")
    batch_file.write_text(batch)
    proc = subprocess.run(
        [sftp, "-q", "-b", str(batch_file), *sshd.cli_args(), *extra, f"{sshd.user}@127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, SHELL="/bin/sh"),  # `!cmd` runs in $SHELL: keep it light
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sftp -b failed: {proc.stderr.strip()[:300]}")
    stamps = [float(line) for line in proc.stdout.split() if line.replace(".", "").isdigit()]
    if len(stamps) != repeats + 2:
        raise RuntimeError(f"unexpected sftp -b output: {proc.stdout[-300:]!r}")
    overhead = stamps[1] - stamps[0]
    return [max(b - a - overhead, 1e-6) for a, b in itertools.pairwise(stamps[1:])]


def _check_file(path: Path, size: int, sha256: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 * MIB):
            digest.update(block)
    if path.stat().st_size != size or digest.hexdigest() != sha256:
        raise RuntimeError(f"{path} does not match the source file")


async def bench_ssh(ctx: BenchContext) -> list[Row]:
    """SFTP small read, exec and bulk download against a private sshd."""
    try:
        import asyncssh
    except ImportError:
        raise Skipped("asyncssh is not installed (pip install -e '.[bench]')") from None
    sshd = PrivateSshd(ctx.tmp)
    sshd.start()
    ctx.info["sshd_port"] = sshd.port
    try:
        try:
            conn = await _connect(sshd)
        except (OSError, asyncssh.Error) as exc:
            assert sshd.service is not None
            raise Skipped(
                f"cannot log in to the private sshd: {exc}; sshd says: {sshd.service.stderr_tail()}"
            ) from exc
        try:
            ctx.info["asyncssh_cipher"] = conn.get_extra_info("send_cipher")
            rows = await _small_and_exec(ctx, conn)
            rows += await _bulk(ctx, sshd, conn)
            return rows
        finally:
            conn.close()
            await conn.wait_closed()
    finally:
        sshd.stop()


async def _small_and_exec(ctx: BenchContext, conn: Any) -> list[Row]:
    fx = ctx.fixture
    small = str(fx.small)
    size = len(fx.small_text)
    rows: list[Row] = []
    async with conn.start_sftp_client() as sftp:

        async def read_small() -> None:
            async with sftp.open(small, "rb") as f:
                data = await f.read(size)
            if len(data) != size:
                raise RuntimeError(f"sftp read {len(data)} bytes of {size}")

        samples = await time_calls(read_small, ctx.n_rtt, ctx.warmup_rtt)
        rows.append(
            latency_row(
                "ssh",
                "sftp_read_rtt",
                "SFTP open+read+close 4 KiB RTT",
                samples,
                "asyncssh, 3 SFTP round trips",
            )
        )

    async def run_true() -> None:
        result = await conn.run("true", check=True)
        del result

    samples = await time_calls(run_true, ctx.n_exec, ctx.warmup_exec)
    rows.append(latency_row("ssh", "exec_rtt", 'conn.run("true") RTT', samples, "asyncssh"))
    return rows


def _download_dir(ctx: BenchContext) -> Path:
    """Where downloads land: tmpfs if there is one, so the disk is not what gets measured."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="kite-bench-", dir=shm))
        ctx.cleanup.append(d)
        return d
    return ctx.tmp


async def _bulk(ctx: BenchContext, sshd: PrivateSshd, conn: Any) -> list[Row]:
    fx = ctx.fixture
    big = str(fx.big)
    mib = fx.big_size // MIB
    dest = _download_dir(ctx) / "ssh-download.bin"
    variants: list[Row] = []

    async with conn.start_sftp_client() as sftp:
        times: list[float] = []
        for _ in range(ctx.repeats):
            dest.unlink(missing_ok=True)
            t0 = time.perf_counter()
            await sftp.get(big, str(dest))
            times.append(time.perf_counter() - t0)
            _check_file(dest, fx.big_size, fx.big_sha256)
        variants.append(
            throughput_row(
                "ssh",
                "read_bulk_asyncssh_get",
                f"asyncssh sftp.get {mib} MiB",
                fx.big_size,
                times,
                "asyncssh sftp.get to a tmpfs file",
            )
        )
        times = []
        for _ in range(ctx.repeats):
            t0 = time.perf_counter()
            async with sftp.open(big, "rb") as f:
                data = await f.read()
            times.append(time.perf_counter() - t0)
            if hashlib.sha256(data).hexdigest() != fx.big_sha256:
                raise RuntimeError("asyncssh read() returned bytes that do not match")
            del data
        variants.append(
            throughput_row(
                "ssh",
                "read_bulk_asyncssh_read",
                f"asyncssh sftp read() {mib} MiB",
                fx.big_size,
                times,
                "asyncssh in-memory read, parallel requests",
            )
        )
    dest.unlink(missing_ok=True)

    # OpenSSH's default cipher (chacha20-poly1305 here), and AES-256-GCM, Kite's own cipher.
    cli_variants = [
        ("read_bulk_sftp_cli", "default cipher", []),
        ("read_bulk_sftp_cli_aesgcm", "aes256-gcm", ["-o", "Ciphers=aes256-gcm@openssh.com"]),
    ]
    for metric, what, extra in cli_variants:
        try:
            times = await asyncio.to_thread(_sftp_cli_gets, sshd, big, dest, ctx.repeats, extra)
            _check_file(dest, fx.big_size, fx.big_sha256)
            variants.append(
                throughput_row(
                    "ssh",
                    metric,
                    f"sftp CLI get {mib} MiB, {what}",
                    fx.big_size,
                    times,
                    "OpenSSH sftp -b, one warm session, to a tmpfs file",
                )
            )
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            ctx.log(f"sftp command line variant ({what}) skipped: {exc}")
            ctx.info[f"{metric}_skipped"] = str(exc)
        finally:
            dest.unlink(missing_ok=True)

    best = max(variants, key=lambda r: r.value)
    ctx.info["ssh_bulk_best"] = best.metric
    winner = Row(
        "ssh",
        "read_bulk",
        f"SSH download {mib} MiB (best variant)",
        best.unit,
        best.value,
        dict(best.stats),
        f"{best.label}: {best.note}",
    )
    return [*variants, winner]
