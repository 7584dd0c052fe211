"""Baseline (a): a bare `websockets` server on loopback, no encryption, no RPC, no file access.

The server (`python -m bench.echo`) runs in its own process, like the bridge. A binary message
asks for a reply of the size in its first 4 bytes (big-endian); the reply is a prebuilt buffer,
so the server does nothing but move frames. A text message `{"bulk": N, "chunk": C}` makes it
send N bytes in C-byte binary messages, then the text message `done`.

The client side uses the same `websockets` asyncio client and options as Kite's transport, with
requests and replies as large as Kite's encrypted `fs.read` frames, so the difference to the
Kite figures is what Kite adds on top of the WebSocket: Noise, the RPC layer and the op itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from agent_core.rpc.frames import dumps, encode_envelope
from bench import (
    SMALL_NAME,
    BenchContext,
    Row,
    Service,
    latency_row,
    throughput_row,
    time_calls,
)

TAG = 16  # AES-GCM tag added to every Noise transport message
BULK_CHUNK = 64 * 1024
MAX_MESSAGE = 1 << 20


# -- the server (its own process) --------------------------------------------------------


async def _handler(ws: Any) -> None:
    replies: dict[int, bytes] = {}
    async for msg in ws:
        if isinstance(msg, str):
            cmd = json.loads(msg)
            total, chunk = int(cmd["bulk"]), int(cmd["chunk"])
            block = memoryview(os.urandom(chunk))
            sent = 0
            while sent < total:
                n = min(chunk, total - sent)
                await ws.send(block[:n])
                sent += n
            await ws.send("done")
            continue
        size = int.from_bytes(msg[:4], "big")
        reply = replies.get(size)
        if reply is None:
            reply = replies[size] = os.urandom(size)
        await ws.send(reply)


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; print `{"port": N}` once listening."""
    import signal

    from websockets.asyncio.server import serve as ws_serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ws_serve(
        _handler, host, port, compression=None, max_size=MAX_MESSAGE, ping_interval=None
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"port": bound}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


# -- the client benchmark ----------------------------------------------------------------


def approx_kite_frames(ctx: BenchContext) -> tuple[int, int]:
    """Encrypted sizes of an `fs.read` request and response, if the bridge did not run."""
    fx = ctx.fixture
    request = encode_envelope({"id": 1000, "op": "fs.read", "args": {"path": SMALL_NAME}})[0]
    result = {"content": fx.small_text, "sha256": fx.small_sha256, "size": len(fx.small_text)}
    response = dumps({"id": 1000, "ok": True, "result": result})
    return len(request) + TAG, len(response) + TAG + 64  # + 64: fields we do not know of


def echo_frame_sizes(ctx: BenchContext) -> tuple[int, int, str]:
    """(request, response, where from): Kite's measured frame sizes when the bridge ran."""
    frames = ctx.shared.get("kite_fs_read_frames")
    if frames:
        return frames["request"], frames["response"], "Kite's measured frame sizes"
    req_size, resp_size = approx_kite_frames(ctx)
    return req_size, resp_size, "approximate Kite frame sizes"


@contextlib.asynccontextmanager
async def echo_connection(ctx: BenchContext) -> AsyncIterator[tuple[Any, Any]]:
    """A running echo server and a client connected to it: (websocket, round_trip)."""
    from websockets.asyncio.client import connect

    req_size, resp_size, _source = echo_frame_sizes(ctx)
    server = Service("echo-server", [sys.executable, "-m", "bench.echo", "--port", "0"], ctx.tmp)
    port = server.first_json()["port"]
    try:
        ws = await connect(
            f"ws://127.0.0.1:{port}/",
            compression=None,
            max_size=MAX_MESSAGE,
            ping_interval=None,
        )
        try:
            request = resp_size.to_bytes(4, "big") + os.urandom(max(0, req_size - 4))

            async def round_trip() -> None:
                await ws.send(request)
                reply = await ws.recv()
                if len(reply) != resp_size:
                    raise RuntimeError(f"echo reply of {len(reply)} bytes, expected {resp_size}")

            yield ws, round_trip
        finally:
            await ws.close()
    finally:
        server.stop()


async def bench_echo(ctx: BenchContext) -> list[Row]:
    """Round trips with Kite's frame sizes, and a bulk download, over a bare WebSocket.

    When the bridge benchmark ran, it has already timed the echo round trip interleaved with
    its own (`ctx.shared["echo_rtt_samples"]`); those samples are the row here."""
    req_size, resp_size, sizes_note = echo_frame_sizes(ctx)
    ctx.info["echo_frame_sizes"] = {
        "request": req_size,
        "response": resp_size,
        "source": sizes_note,
    }
    async with echo_connection(ctx) as (ws, round_trip):
        shared = ctx.shared.get("echo_rtt_samples")
        if shared is not None:
            samples, how = shared, f"bare websockets, {sizes_note}, interleaved with Kite's"
        else:
            samples = await time_calls(round_trip, ctx.n_rtt, ctx.warmup_rtt)
            how = f"bare websockets, {sizes_note}"
        rows = [
            latency_row(
                "echo",
                "ws_rtt",
                f"WebSocket echo {req_size} B → {resp_size} B RTT",
                samples,
                how,
            )
        ]

        total = ctx.fixture.big_size
        times: list[float] = []
        for _ in range(ctx.repeats):
            received: list[bytes] = []
            t0 = time.perf_counter()
            await ws.send(json.dumps({"bulk": total, "chunk": BULK_CHUNK}))
            while True:
                msg = await ws.recv()
                if isinstance(msg, str):
                    break
                received.append(msg)
            times.append(time.perf_counter() - t0)
            got = sum(len(m) for m in received)
            if got != total:
                raise RuntimeError(f"bulk echo delivered {got} bytes, expected {total}")
            del received
        rows.append(
            throughput_row(
                "echo",
                "ws_bulk",
                f"WebSocket bulk {total // (1024 * 1024)} MiB (64 KiB msgs)",
                total,
                times,
                "bare websockets, server → client",
            )
        )
        return rows


if __name__ == "__main__":
    raise SystemExit(main())
