"""Audit log: one JSON object per line, 0600, appended atomically, never file contents."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from pathlib import Path

from bridge.audit import MAX_STRING, AuditLog


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_line_format(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "state" / "audit.log")
    log.record(
        {
            "device": "dev1",
            "op": "fs.read",
            "id": 7,
            "path": "a.txt",
            "bytes": 12,
            "outcome": "ok",
            "duration_ms": 0.42,
        }
    )
    log.record(
        {
            "device": "dev1",
            "op": "exec.run",
            "command": "ls -la",
            "outcome": "ETIMEDOUT",
            "duration_ms": 1000.0,
        }
    )
    log.close()
    raw = (tmp_path / "state" / "audit.log").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 2
    first, second = lines(tmp_path / "state" / "audit.log")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first == {
        "ts": first["ts"],
        "device": "dev1",
        "op": "fs.read",
        "id": 7,
        "path": "a.txt",
        "bytes": 12,
        "outcome": "ok",
        "duration_ms": 0.42,
    }
    assert second["command"] == "ls -la" and second["outcome"] == "ETIMEDOUT"
    log.record({"op": "late"})  # after close: ignored, no exception


def test_mode_0600_even_for_an_existing_file(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    p.write_text("")
    os.chmod(p, 0o644)
    log = AuditLog(p)
    log.record({"op": "x"})
    log.close()
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    p2 = tmp_path / "new.log"
    AuditLog(p2).close()
    assert stat.S_IMODE(p2.stat().st_mode) == 0o600


def test_never_logs_contents_and_bounds_size(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.log")
    log.record(
        {
            "op": "fs.write",
            "path": "f",
            "content": "SECRET-CONTENT",
            "data": b"SECRET-BYTES",
            "nested": {"payload": "SECRET-PAYLOAD", "ok": 1},
            "command": "x" * 10000,
            "newline": "a\nb",
        }
    )
    log.close()
    raw = (tmp_path / "a.log").read_text()
    assert "SECRET" not in raw and raw.count("\n") == 1
    (entry,) = lines(tmp_path / "a.log")
    assert entry["nested"] == {"ok": 1}
    assert len(entry["command"]) < MAX_STRING + 50 and entry["newline"] == "a\nb"


def test_appends_and_concurrent_lines_stay_whole(tmp_path: Path) -> None:
    p = tmp_path / "a.log"
    AuditLog(p).record({"op": "first"})
    logs = [AuditLog(p), AuditLog(p)]  # two writers on one file, like two bridges

    def work(n: int) -> None:
        for i in range(200):
            logs[n % 2].record({"op": "fs.read", "path": f"{n}/{i}/" + "p" * 1500, "outcome": "ok"})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    entries = lines(p)  # every line parses: no interleaving
    assert entries[0]["op"] == "first" and len(entries) == 1 + 6 * 200
