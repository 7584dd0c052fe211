"""A bridge killed with SIGKILL mid-write leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import time
from pathlib import Path

from agent_core.rpc.frames import encode_envelope
from tests.harness import BridgeProcess, IndependentClient, parse_pair_url


def test_kill_9_during_writes_never_tears(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    state = tmp_path / "state"
    old = "old content\n" * 200_000  # 2.4 MB: the write spans many frames
    new = "NEW CONTENT\n" * 200_000
    target = ws / "file.txt"
    target.write_text(old)
    allowed = {hashlib.sha256(old.encode()).hexdigest(), hashlib.sha256(new.encode()).hexdigest()}
    rng = random.Random(1234)
    static = IndependentClient.new_static_key()
    host_key = b""
    outcomes = []
    for round_ in range(6):
        bridge = BridgeProcess(ws, state)
        try:
            if round_ == 0:
                secret, host_key = parse_pair_url(bridge.pair_url())
                client = IndependentClient.handshake(
                    bridge.ws_url, static_private=static, host_key=host_key, psk=secret
                )
            else:
                client = IndependentClient.handshake(
                    bridge.ws_url, static_private=static, host_key=host_key
                )
            content = new if round_ % 2 == 0 else old
            body = json.dumps(
                {"id": 1, "op": "fs.write", "args": {"path": "file.txt", "content": content}}
            )
            # Send the request frame by frame (envelope chunks), then kill at a random moment.
            for frame in encode_envelope(json.loads(body)):
                client.send_plain(frame)
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            bridge.stop(signal.SIGKILL)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        assert digest in allowed, f"torn file after kill in round {round_}"
        outcomes.append(digest)
    # The kills landed at different moments; record what happened for the reader.
    print(
        "outcomes:",
        [("new" if d == hashlib.sha256(new.encode()).hexdigest() else "old") for d in outcomes],
    )
