"""Snapshot store: content-addressed atomic blobs and an append-only SQLite index."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from bridge.snapshots import SnapshotStore, workspace_key


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir()
    s = SnapshotStore(tmp_path / "state", ws)
    yield s
    s.close()


def test_layout_and_permissions(tmp_path: Path, store: SnapshotStore) -> None:
    key = workspace_key(tmp_path / "ws")
    assert store.dir == tmp_path / "state" / "snapshots" / key
    assert len(key) == 16 and str(tmp_path) not in key
    assert (store.dir / "index.sqlite3").exists()
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.dir / "index.sqlite3").stat().st_mode) == 0o600
    digest = store.put_blob(b"x")
    blob = store.blobs_dir / digest[:2] / digest
    assert blob.exists() and stat.S_IMODE(blob.stat().st_mode) == 0o600


def test_blobs_are_content_addressed(store: SnapshotStore) -> None:
    a = store.put_blob(b"hello")
    assert a == sha(b"hello")
    assert store.put_blob(b"hello") == a
    assert store.blob(a) == b"hello"
    assert store.has_blob(a) and not store.has_blob(sha(b"nope"))
    with pytest.raises(KeyError):
        store.blob(sha(b"nope"))
    with pytest.raises(ValueError):
        store.blob("../../etc/passwd")
    assert not [p for p in store.blobs_dir.rglob(".tmp-*")]


def test_put_blob_fd_reads_the_whole_file(tmp_path: Path, store: SnapshotStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    f = tmp_path / "big"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.lseek(fd, 1000, os.SEEK_SET)  # the fd's offset does not matter
        digest = store.put_blob_fd(fd)
    finally:
        os.close(fd)
    assert digest == sha(data) and store.blob(digest) == data


def test_record_and_history(store: SnapshotStore) -> None:
    old = store.put_blob(b"old")
    s1 = store.record(
        op="write",
        path="a.txt",
        prev_sha256=None,
        new_sha256=sha(b"old"),
        device_id="d1",
        request_id=1,
    )
    s2 = store.record(
        op="write",
        path="a.txt",
        prev_sha256=old,
        new_sha256=sha(b"new"),
        device_id="d1",
        request_id=2,
    )
    s3 = store.record(
        op="move",
        path="b.txt",
        prev_sha256=None,
        new_sha256=None,
        device_id="d2",
        extra={"from": "a.txt"},
    )
    assert s1 < s2 < s3
    rows = store.history()
    assert [r.seq for r in rows] == [s3, s2, s1]
    assert rows[0].extra == {"from": "a.txt"} and rows[0].request_id is None
    assert [r.seq for r in store.history(path="a.txt")] == [s2, s1]
    assert store.history(path="a.txt")[1].prev_sha256 is None  # did not exist before
    assert len(store.history(limit=1)) == 1
    with pytest.raises(ValueError):  # a row may only name a stored blob
        store.record(
            op="write", path="x", prev_sha256=sha(b"never stored"), new_sha256=None, device_id="d"
        )


def test_index_is_append_only(store: SnapshotStore) -> None:
    store.record(op="delete", path="x", prev_sha256=None, new_sha256=None, device_id="d")
    db = sqlite3.connect(store.dir / "index.sqlite3")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE snapshots SET path = 'y'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM snapshots")
    finally:
        db.close()


def test_survives_reopen_and_separates_workspaces(tmp_path: Path) -> None:
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    s1 = SnapshotStore(tmp_path / "state", tmp_path / "w1")
    s1.record(op="write", path="f", prev_sha256=None, new_sha256=None, device_id="d")
    s1.close()
    s1 = SnapshotStore(tmp_path / "state", tmp_path / "w1")
    s2 = SnapshotStore(tmp_path / "state", tmp_path / "w2")
    assert len(s1.history()) == 1 and s2.history() == []
    assert s1.dir != s2.dir
    s1.close()
    s2.close()


def test_concurrent_records(store: SnapshotStore) -> None:
    def work(n: int) -> None:
        for i in range(50):
            digest = store.put_blob(f"{n}-{i}".encode())
            store.record(
                op="write", path=f"f{n}", prev_sha256=digest, new_sha256=None, device_id=str(n)
            )

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = store.history(limit=1000)
    assert len(rows) == 300 and len({r.seq for r in rows}) == 300
    assert all(store.blob(r.prev_sha256 or "") for r in rows)
