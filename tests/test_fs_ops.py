"""fs.* op handlers, driven through the real OpContext contract with a real jail, policy and
snapshot store on tmp_path. emit/send_chunk/recv_chunks are plain async functions that record
what they are given, exactly as the connection layer would call them."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

import bridge.ops.fs as fs
from agent_core.rpc.errors import (
    EACCES,
    ECONFLICT,
    EEXIST,
    EINVAL,
    EISDIR,
    ENOENT,
    ENOSPC,
    ENOTDIR,
    ETOOBIG,
    RpcError,
)
from bridge.jail import Workspace
from bridge.ops.base import REGISTRY, OpContext
from bridge.policy import Policy
from bridge.snapshots import SnapshotStore
from tests.test_jail import build_tree, tree_state


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Harness:
    """A workspace, policy and snapshot store, and a way to call ops as the connection does."""

    def __init__(self, tmp: Path, policy: Policy | None = None, root: Path | None = None) -> None:
        self.tmp = tmp
        self.root = root or tmp / "ws"
        self.root.mkdir(exist_ok=True)
        self.policy = policy or Policy()
        self.ws = Workspace(self.root, self.policy)
        self.snaps = SnapshotStore(tmp / "state", self.root)
        self.ids = itertools.count(1)
        self.sent: list[tuple[bytes, bool]] = []
        self.events: list[tuple[str, Any]] = []
        self.last_ctx: OpContext | None = None

    def ctx(self, chunks: Iterable[bytes] = ()) -> OpContext:
        async def emit(name: str, data: Any) -> None:
            self.events.append((name, data))

        async def send_chunk(payload: bytes, final: bool) -> None:
            self.sent.append((bytes(payload), final))

        async def recv_chunks() -> AsyncIterator[bytes]:
            for c in chunks:
                yield c

        self.last_ctx = OpContext(
            request_id=next(self.ids),
            device_id="dev-test",
            workspace=self.ws,
            policy=self.policy,
            snapshots=self.snaps,
            emit=emit,
            send_chunk=send_chunk,
            recv_chunks=recv_chunks,
        )
        return self.last_ctx

    def call(self, op: str, args: dict[str, Any], chunks: Iterable[bytes] = ()) -> dict[str, Any]:
        self.sent = []
        return asyncio.run(REGISTRY[op].handler(self.ctx(chunks), args))

    def error(self, op: str, args: dict[str, Any], chunks: Iterable[bytes] = ()) -> RpcError:
        with pytest.raises(RpcError) as ei:
            self.call(op, args, chunks)
        assert str(self.tmp) not in ei.value.message
        return ei.value

    def close(self) -> None:
        self.ws.close()
        self.snaps.close()


@pytest.fixture
def h(tmp_path: Path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def trap(tmp_path: Path):
    """A harness on the jail test's tree of traps."""
    root, _outside = build_tree(tmp_path)
    harness = Harness(tmp_path, root=root)
    yield harness
    harness.close()


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".kite-tmp-" in p.name]


def test_all_ops_registered() -> None:
    names = {
        "fs.read",
        "fs.write",
        "fs.list",
        "fs.stat",
        "fs.glob",
        "fs.grep",
        "fs.delete",
        "fs.move",
        "fs.mkdir",
    }
    assert names <= set(REGISTRY)
    assert {n for n in names if REGISTRY[n].mutates} == {
        "fs.write",
        "fs.delete",
        "fs.move",
        "fs.mkdir",
    }


# -- fs.read -----------------------------------------------------------------------------------


def test_read_text(h: Harness) -> None:
    data = "héllo\nworld\n".encode()
    (h.root / "a.txt").write_bytes(data)
    r = h.call("fs.read", {"path": "a.txt"})
    assert r == {
        "content": "héllo\nworld\n",
        "sha256": sha(data),
        "size": len(data),
        "encoding": "utf-8",
        "truncated": False,
        "total_lines": 2,
    }
    assert h.last_ctx is not None and h.last_ctx.audit["path"] == "a.txt"


def test_read_line_range(h: Harness) -> None:
    data = "".join(f"line {i}\n" for i in range(1, 11)).encode()
    (h.root / "l.txt").write_bytes(data)
    r = h.call("fs.read", {"path": "l.txt", "start_line": 3, "end_line": 5})
    assert r["content"] == "line 3\nline 4\nline 5\n"
    assert (r["start_line"], r["end_line"], r["total_lines"]) == (3, 5, 10)
    assert r["truncated"] is True and r["sha256"] == sha(data) and r["size"] == len(data)
    r = h.call("fs.read", {"path": "l.txt", "start_line": 9})
    assert r["content"] == "line 9\nline 10\n" and r["end_line"] == 10
    r = h.call("fs.read", {"path": "l.txt", "start_line": 50})
    assert r["content"] == "" and r["end_line"] == 49
    r = h.call("fs.read", {"path": "l.txt", "start_line": 1, "end_line": 10})
    assert r["truncated"] is False
    assert h.error("fs.read", {"path": "l.txt", "start_line": 5, "end_line": 2}).code == EINVAL
    err = h.error("fs.read", {"path": "l.txt", "start_line": 1, "offset": 2})
    assert err.code == EINVAL


def test_read_line_range_across_blocks(h: Harness) -> None:
    lines = [f"{i:07d} " + "x" * 90 + "\n" for i in range(30000)]  # ~3 MB, several 1 MiB blocks
    data = "".join(lines).encode()
    (h.root / "big.txt").write_bytes(data)
    r = h.call("fs.read", {"path": "big.txt", "start_line": 10000, "end_line": 21000})
    assert r["content"] == "".join(lines[9999:21000])
    assert r["total_lines"] == 30000 and r["sha256"] == sha(data)


def test_read_byte_range_respects_characters(h: Harness) -> None:
    data = "aé€b".encode()  # a(1) é(2) €(3) b(1)
    (h.root / "u.txt").write_bytes(data)
    r = h.call("fs.read", {"path": "u.txt", "offset": 1, "length": 2})
    assert (r["content"], r["offset"], r["length"]) == ("é", 1, 2)
    r = h.call("fs.read", {"path": "u.txt", "offset": 2, "length": 4})  # starts inside é
    assert (r["content"], r["offset"]) == ("€", 3)
    r = h.call("fs.read", {"path": "u.txt", "offset": 3, "length": 2})  # ends inside €
    assert r["content"] == ""
    r = h.call("fs.read", {"path": "u.txt", "offset": 100})
    assert r["content"] == "" and r["truncated"] is True


def test_read_non_utf8_needs_binary(h: Harness) -> None:
    (h.root / "bin").write_bytes(b"\xff\xfe\x00abc")
    err = h.error("fs.read", {"path": "bin"})
    assert err.code == EINVAL and "binary" in err.message


def test_read_binary_streams_chunks(h: Harness) -> None:
    data = os.urandom(3 * fs.CHUNK_SIZE + 123)
    (h.root / "b.bin").write_bytes(data)
    r = h.call("fs.read", {"path": "b.bin", "binary": True})
    assert r == {"size": len(data), "sha256": sha(data), "binary": True, "chunks": 4}
    assert all(len(p) <= fs.CHUNK_SIZE for p, _ in h.sent)
    assert [f for _, f in h.sent] == [False, False, False, True]
    assert b"".join(p for p, _ in h.sent) == data


def test_read_binary_big_file_in_thread_and_range(h: Harness) -> None:
    data = os.urandom(2 * 1024 * 1024 + 7)
    (h.root / "b.bin").write_bytes(data)
    r = h.call("fs.read", {"path": "b.bin", "binary": True})
    assert b"".join(p for p, _ in h.sent) == data and r["sha256"] == sha(data)
    assert r["chunks"] == len(h.sent) and h.sent[-1][1] is True
    r = h.call("fs.read", {"path": "b.bin", "binary": True, "offset": 1000, "length": 200000})
    assert b"".join(p for p, _ in h.sent) == data[1000:201000]
    assert (r["offset"], r["length"], r["sha256"]) == (1000, 200000, sha(data))


def test_read_binary_empty_file_sends_one_final_chunk(h: Harness) -> None:
    (h.root / "empty").write_bytes(b"")
    r = h.call("fs.read", {"path": "empty", "binary": True})
    assert h.sent == [(b"", True)] and r["chunks"] == 1 and r["size"] == 0


def test_read_limits(tmp_path: Path) -> None:
    h = Harness(tmp_path, Policy(read_max_bytes=1000, text_max_bytes=100))
    (h.root / "big").write_bytes(b"x" * 1001)
    (h.root / "mid").write_bytes(b"y\n" * 200)
    assert h.error("fs.read", {"path": "big"}).code == ETOOBIG
    assert h.error("fs.read", {"path": "big", "binary": True}).code == ETOOBIG
    assert h.error("fs.read", {"path": "mid"}).code == ETOOBIG
    r = h.call("fs.read", {"path": "mid", "start_line": 1, "end_line": 10})  # a range fits
    assert r["content"] == "y\n" * 10
    assert h.error("fs.read", {"path": "mid", "start_line": 1, "end_line": 60}).code == ETOOBIG
    h.close()


def test_read_errors(trap: Harness) -> None:
    assert trap.error("fs.read", {"path": "a"}).code == EISDIR
    assert trap.error("fs.read", {"path": "nope"}).code == ENOENT
    assert trap.error("fs.read", {"path": ""}).code == EINVAL
    assert trap.error("fs.read", {"path": 3}).code == EINVAL
    assert trap.error("fs.read", {"path": "a/b/f.txt", "offset": -1}).code == EINVAL
    for path, code in [
        ("../outside/secret.txt", EACCES),
        ("/etc/passwd", EACCES),
        ("to_passwd", EACCES),
        ("out_rel/secret.txt", EACCES),
        ("hard", EACCES),
        ("fifo", EACCES),
        ("devnull", EACCES),
        (".env", EACCES),
        ("sub/.env.local", EACCES),
        ("keys/id_rsa", EACCES),
        ("l1", EINVAL),
        ("a\x00", EINVAL),
    ]:
        assert trap.error("fs.read", {"path": path}).code == code, path
        assert trap.sent == []


def test_read_through_inside_links(trap: Harness) -> None:
    assert trap.call("fs.read", {"path": "c1"})["content"] == "hello\n"
    assert trap.call("fs.read", {"path": "in_rel/f.txt"})["content"] == "hello\n"


# -- fs.write ----------------------------------------------------------------------------------


def test_write_create_and_overwrite(h: Harness) -> None:
    r = h.call("fs.write", {"path": "d/e/new.txt", "content": "one\n"})
    assert r == {"sha256": sha(b"one\n"), "size": 4, "created": True}
    assert (h.root / "d" / "e" / "new.txt").read_text() == "one\n"
    r = h.call("fs.write", {"path": "d/e/new.txt", "content": "two\n"})
    assert r["created"] is False and (h.root / "d/e/new.txt").read_text() == "two\n"
    assert no_temp_files(h.root)
    assert h.last_ctx is not None and h.last_ctx.audit == {"path": "d/e/new.txt", "bytes": 4}


def test_write_create_parents_false(h: Harness) -> None:
    err = h.error("fs.write", {"path": "x/y.txt", "content": "", "create_parents": False})
    assert err.code == ENOENT
    assert not (h.root / "x").exists()


def test_write_if_match(h: Harness) -> None:
    (h.root / "f").write_text("v1")
    err = h.error("fs.write", {"path": "f", "content": "v2", "if_match": sha(b"other")})
    assert err.code == ECONFLICT and err.details == {"current_sha256": sha(b"v1")}
    assert (h.root / "f").read_text() == "v1"
    r = h.call("fs.write", {"path": "f", "content": "v2", "if_match": sha(b"v1").upper()})
    assert r["sha256"] == sha(b"v2")
    err = h.error("fs.write", {"path": "missing", "content": "x", "if_match": sha(b"v1")})
    assert err.code == ECONFLICT and err.details == {"current_sha256": None}
    assert not (h.root / "missing").exists()
    assert h.error("fs.write", {"path": "f", "content": "x", "if_match": "abc"}).code == EINVAL
    assert no_temp_files(h.root)


def test_write_if_match_is_a_compare_and_swap(h: Harness) -> None:
    """Many concurrent writers all holding the same if_match: exactly one wins."""
    (h.root / "f").write_text("base")
    base = sha(b"base")

    async def main() -> list[Any]:
        tasks = [
            REGISTRY["fs.write"].handler(
                h.ctx(), {"path": "f", "content": f"w{i}", "if_match": base}
            )
            for i in range(20)
        ]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    ok = [r for r in results if isinstance(r, dict)]
    assert len(ok) == 1
    assert all(isinstance(r, RpcError) and r.code == ECONFLICT for r in results if r not in ok)


def test_write_preserves_mode(h: Harness) -> None:
    p = h.root / "run.sh"
    p.write_text("#!/bin/sh\n")
    p.chmod(0o750)
    h.call("fs.write", {"path": "run.sh", "content": "#!/bin/sh\necho hi\n"})
    assert stat.S_IMODE(p.stat().st_mode) == 0o750
    old = os.umask(0o027)
    try:
        h.call("fs.write", {"path": "fresh.txt", "content": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((h.root / "fresh.txt").stat().st_mode) == 0o644 & ~0o027


def test_write_is_atomic_under_concurrent_reads(h: Harness) -> None:
    old = b"A" * (3 * 1024 * 1024)
    new = b"B" * (5 * 1024 * 1024)
    target = h.root / "big.txt"
    target.write_bytes(old)
    stop = threading.Event()
    seen: set[bytes] = set()
    torn: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if data not in (old, new):
                torn.append(len(data))
            seen.add(data[:1])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(6):
            h.call(
                "fs.write", {"path": "big.txt", "content": (new if i % 2 == 0 else old).decode()}
            )
    finally:
        stop.set()
        t.join()
    assert torn == []
    assert seen == {b"A", b"B"}
    assert no_temp_files(h.root)


def test_write_binary_from_chunks(h: Harness) -> None:
    pieces = [os.urandom(1000), b"", os.urandom(70000)]
    r = h.call("fs.write", {"path": "bin/x.dat", "binary": True}, chunks=pieces)
    data = b"".join(pieces)
    assert r == {"sha256": sha(data), "size": len(data), "created": True}
    assert (h.root / "bin" / "x.dat").read_bytes() == data
    err = h.error("fs.write", {"path": "y", "binary": True, "content": "x"})
    assert err.code == EINVAL


def test_write_binary_over_cap(tmp_path: Path) -> None:
    h = Harness(tmp_path, Policy(read_max_bytes=1000))
    (h.root / "keep").write_bytes(b"old")
    err = h.error("fs.write", {"path": "keep", "binary": True}, chunks=[b"x" * 600, b"y" * 600])
    assert err.code == ETOOBIG
    assert (h.root / "keep").read_bytes() == b"old"
    assert no_temp_files(h.root)
    h.close()


def test_write_binary_if_match_fails_before_streaming(h: Harness) -> None:
    (h.root / "f").write_bytes(b"v1")
    consumed: list[bytes] = []

    def chunks() -> Iterable[bytes]:
        for c in (b"a", b"b"):
            consumed.append(c)
            yield c

    err = h.error("fs.write", {"path": "f", "binary": True, "if_match": "0" * 64}, chunks())
    assert err.code == ECONFLICT and consumed == []


def test_write_text_limit_and_bad_text(tmp_path: Path) -> None:
    h = Harness(tmp_path, Policy(text_max_bytes=10))
    assert h.error("fs.write", {"path": "f", "content": "x" * 11}).code == ETOOBIG
    assert h.error("fs.write", {"path": "f", "content": "\ud800"}).code == EINVAL
    assert h.error("fs.write", {"path": "f"}).code == EINVAL
    assert not (h.root / "f").exists()
    h.close()


def test_write_enospc_removes_temp(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    (h.root / "f").write_text("old")

    def full_disk(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs, "_write_and_sync", full_disk)
    err = h.error("fs.write", {"path": "f", "content": "new content that does not fit"})
    assert err.code == ENOSPC
    assert (h.root / "f").read_text() == "old"
    assert no_temp_files(h.root)


def test_write_read_only_policy(tmp_path: Path) -> None:
    h = Harness(tmp_path, Policy(read_only=True))
    (h.root / "d").mkdir()
    (h.root / "f").write_text("x")
    before = tree_state(h.root)
    assert h.error("fs.write", {"path": "f", "content": "y"}).code == EACCES
    assert h.error("fs.delete", {"path": "f"}).code == EACCES
    assert h.error("fs.move", {"from": "f", "to": "g"}).code == EACCES
    assert h.error("fs.mkdir", {"path": "n"}).code == EACCES
    assert tree_state(h.root) == before
    assert h.call("fs.read", {"path": "f"})["content"] == "x"
    h.close()


def test_write_through_inside_symlink_keeps_link(trap: Harness) -> None:
    trap.call("fs.write", {"path": "c1", "content": "via link\n"})
    assert os.readlink(trap.root / "c1") == "c2"
    assert (trap.root / "a" / "b" / "f.txt").read_text() == "via link\n"


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "/tmp/x",
        "to_passwd",
        "out_rel/secret.txt",
        "out_rel/new.txt",
        "out_abs/dir/inner.txt",
        "out_file",
        "dotdot/outside/secret.txt",
        "hard",
        "fifo",
        "devnull",
        ".env",
        "to_env",
        "sub/.env.local",
        "keys/id_rsa",
        "newdir/id_rsa",
        ".kite/bridge.toml",
        ".kite",
        "a\x00b",
        "l1",
    ],
)
def test_write_escapes_change_nothing(trap: Harness, path: str) -> None:
    before = tree_state(trap.tmp / "outside"), tree_state(trap.root)
    err = trap.error("fs.write", {"path": path, "content": "pwned"})
    assert err.code in (EACCES, EINVAL, EISDIR), (path, err)
    assert (tree_state(trap.tmp / "outside"), tree_state(trap.root)) == before
    assert trap.snaps.history() == []


def test_write_directory_is_eisdir(h: Harness) -> None:
    (h.root / "d").mkdir()
    assert h.error("fs.write", {"path": "d", "content": "x"}).code == EISDIR
    assert no_temp_files(h.root)


def test_write_records_snapshots(h: Harness) -> None:
    h.call("fs.write", {"path": "s.txt", "content": "first"})
    h.call("fs.write", {"path": "s.txt", "content": "second"})
    rows = h.snaps.history(path="s.txt")
    assert [(r.op, r.prev_sha256, r.new_sha256) for r in rows] == [
        ("write", sha(b"first"), sha(b"second")),
        ("write", None, sha(b"first")),
    ]
    assert h.snaps.blob(sha(b"first")) == b"first"
    assert rows[0].device_id == "dev-test" and isinstance(rows[0].request_id, int)


# -- fs.list / fs.stat -------------------------------------------------------------------------


def test_list(trap: Harness) -> None:
    r = trap.call("fs.list", {})
    names = [e["name"] for e in r["entries"]]
    assert names == sorted(names) and r["truncated"] is False
    assert ".env" not in names and ".kite" not in names  # dotfiles hidden by default
    types = {e["name"]: e["type"] for e in r["entries"]}
    assert types["a"] == "dir" and types["c1"] == "symlink" and types["fifo"] == "other"
    assert types["back\\slash"] == "file"
    r = trap.call("fs.list", {"path": ".", "all": True})
    names = [e["name"] for e in r["entries"]]
    assert ".kite" in names and ".env" not in names  # denied entries never appear
    r = trap.call("fs.list", {"path": "keys", "all": True})
    assert r["entries"] == []
    r = trap.call("fs.list", {"path": "a/b"})
    assert r["entries"][0]["name"] == "f.txt" and r["entries"][0]["size"] == 6
    assert isinstance(r["entries"][0]["mtime"], float)
    r = trap.call("fs.list", {"limit": 2})
    assert len(r["entries"]) == 2 and r["truncated"] is True
    assert trap.call("fs.list", {"path": "in_rel"})["entries"][0]["name"] == "f.txt"
    assert trap.error("fs.list", {"path": "a/b/f.txt"}).code == ENOTDIR
    assert trap.error("fs.list", {"path": "out_rel"}).code == EACCES
    assert trap.error("fs.list", {"path": ".."}).code == EACCES
    assert trap.error("fs.list", {"path": "nope"}).code == ENOENT
    assert trap.error("fs.list", {"limit": 0}).code == EINVAL


def test_stat(trap: Harness) -> None:
    r = trap.call("fs.stat", {"path": "a/b/f.txt", "hash": True})
    assert r["type"] == "file" and r["size"] == 6 and r["sha256"] == sha(b"hello\n")
    assert r["mode"] == f"{stat.S_IMODE((trap.root / 'a/b/f.txt').stat().st_mode):04o}"
    assert "sha256" not in trap.call("fs.stat", {"path": "a/b/f.txt"})
    assert trap.call("fs.stat", {"path": "a"})["type"] == "dir"
    assert trap.call("fs.stat", {"path": "c1"})["path"] == "a/b/f.txt"
    assert trap.call("fs.stat", {"path": "c1", "follow": False})["type"] == "symlink"
    assert trap.call("fs.stat", {"path": "fifo"})["type"] == "other"
    assert trap.error("fs.stat", {"path": "a", "hash": True}).code == EISDIR
    assert trap.error("fs.stat", {"path": "hard", "hash": True}).code == EACCES
    assert trap.error("fs.stat", {"path": ".env"}).code == EACCES
    assert trap.error("fs.stat", {"path": "to_passwd"}).code == EACCES
    assert trap.error("fs.stat", {"path": "../outside"}).code == EACCES
    assert trap.error("fs.stat", {"path": "nope"}).code == ENOENT


# -- fs.glob -----------------------------------------------------------------------------------


def make_project(root: Path) -> None:
    files = {
        "setup.py": "print('setup')\n",
        "src/app/main.py": "import os\nTODO = 1\n",
        "src/app/util.py": "def util():\n    return 'todo later'\n",
        "src/app/data.json": '{"todo": true}\n',
        "src/lib/deep/x.py": "x = 'TODO'\n",
        "build/out.py": "TODO build artefact\n",
        "logs/a.log": "TODO in a log\n",
        "logs/keep.log": "TODO kept log\n",
        "docs/readme.md": "nothing\n",
        "docs/.gitignore": "*.tmp\n",
        "docs/notes.tmp": "TODO tmp\n",
        ".git/config": "TODO git internals\n",
        ".env": "TODO secret\n",
        "src/.env.local": "TODO secret\n",
        "img/blob.bin": "TODO\x00binary",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / ".gitignore").write_text("build/\n*.log\n!keep.log\n")


def test_glob(h: Harness) -> None:
    make_project(h.root)
    r = h.call("fs.glob", {"pattern": "**/*.py"})
    assert r == {
        "paths": ["setup.py", "src/app/main.py", "src/app/util.py", "src/lib/deep/x.py"],
        "truncated": False,
    }
    assert h.call("fs.glob", {"pattern": "*.py"})["paths"] == ["setup.py"]
    assert h.call("fs.glob", {"pattern": "src/*/*.py"})["paths"] == [
        "src/app/main.py",
        "src/app/util.py",
    ]
    assert h.call("fs.glob", {"pattern": "*.py", "path": "src/app"})["paths"] == [
        "src/app/main.py",
        "src/app/util.py",
    ]
    assert h.call("fs.glob", {"pattern": "src/**"})["paths"] == [
        "src/app/data.json",
        "src/app/main.py",
        "src/app/util.py",
        "src/lib/deep/x.py",
    ]
    assert h.call("fs.glob", {"pattern": "**/*.log"})["paths"] == ["logs/keep.log"]
    assert h.call("fs.glob", {"pattern": "docs/*"})["paths"] == [
        "docs/.gitignore",
        "docs/readme.md",
    ]
    assert h.call("fs.glob", {"pattern": "**/config"})["paths"] == []  # .git skipped
    assert h.call("fs.glob", {"pattern": "**/.env*"})["paths"] == []  # denied
    assert h.call("fs.glob", {"pattern": "src/app/[mu]*.py"})["paths"] == [
        "src/app/main.py",
        "src/app/util.py",
    ]
    r = h.call("fs.glob", {"pattern": "**/*.py", "limit": 2})
    assert len(r["paths"]) == 2 and r["truncated"] is True
    assert h.error("fs.glob", {"pattern": "../*"}).code == EACCES
    assert h.error("fs.glob", {"pattern": "/etc/*"}).code == EACCES
    assert h.error("fs.glob", {"pattern": "*", "path": "../"}).code == EACCES


def test_glob_does_not_follow_links_out(trap: Harness) -> None:
    r = trap.call("fs.glob", {"pattern": "**/*.txt"})
    assert r["paths"] == ["a/b/f.txt"]  # not outside/secret.txt through out_rel/out_abs/dotdot


# -- fs.grep -----------------------------------------------------------------------------------


def test_grep(h: Harness) -> None:
    make_project(h.root)
    r = h.call("fs.grep", {"pattern": "TODO"})
    assert [(m["path"], m["line"]) for m in r["matches"]] == [
        ("logs/keep.log", 1),
        ("src/app/main.py", 2),
        ("src/lib/deep/x.py", 1),
    ]
    assert r["truncated"] is False
    # searched: setup.py, main.py, util.py, data.json, x.py, keep.log, readme.md, docs/.gitignore,
    # .gitignore — not build/, *.log but keep.log, docs/*.tmp, .git/, .env*, the binary file
    assert r["files_searched"] == 9
    r = h.call("fs.grep", {"pattern": "todo", "ignore_case": True, "glob": "*.py"})
    assert [m["path"] for m in r["matches"]] == [
        "src/app/main.py",
        "src/app/util.py",
        "src/lib/deep/x.py",
    ]
    r = h.call("fs.grep", {"pattern": "todo", "ignore_case": True, "glob": "src/app/*"})
    assert {m["path"] for m in r["matches"]} == {
        "src/app/main.py",
        "src/app/util.py",
        "src/app/data.json",
    }
    r = h.call("fs.grep", {"pattern": "TODO", "path": "src/app/main.py", "context": 1})
    assert r["matches"] == [
        {
            "path": "src/app/main.py",
            "line": 2,
            "text": "TODO = 1",
            "before": ["import os"],
            "after": [],
        }
    ]
    r = h.call("fs.grep", {"pattern": "TODO", "path": "src"})
    assert [m["path"] for m in r["matches"]] == ["src/app/main.py", "src/lib/deep/x.py"]
    r = h.call("fs.grep", {"pattern": "o", "max_results": 2})
    assert len(r["matches"]) == 2 and r["truncated"] is True
    assert h.error("fs.grep", {"pattern": "("}).code == EINVAL
    assert h.error("fs.grep", {"pattern": "x", "path": "../"}).code == EACCES
    assert h.error("fs.grep", {"pattern": "x", "path": ".env"}).code == EACCES
    assert h.error("fs.grep", {"pattern": "x", "context": 1000}).code == EINVAL


def test_grep_nested_gitignore_applies_below_start(h: Harness) -> None:
    make_project(h.root)
    r = h.call("fs.grep", {"pattern": "TODO", "path": "docs"})
    assert r["matches"] == []  # docs/.gitignore hides notes.tmp
    r = h.call("fs.grep", {"pattern": "TODO", "path": "build"})
    assert r["matches"] == []  # the root .gitignore still applies when starting below it


def test_grep_skips_links_hardlinks_and_specials(trap: Harness) -> None:
    (trap.tmp / "outside" / "secret.txt").write_text("hello from outside\n")
    r = trap.call("fs.grep", {"pattern": "hello|SECRET|TOKEN|PRIVATE"})
    assert [m["path"] for m in r["matches"]] == ["a/b/f.txt"]


def test_grep_caps_line_text_and_file_size(h: Harness) -> None:
    (h.root / "long.txt").write_text("x" * 2000 + "NEEDLE\n")
    (h.root / "huge.txt").write_bytes(b"NEEDLE\n" + b"y" * (fs.GREP_MAX_FILE + 10))
    r = h.call("fs.grep", {"pattern": "NEEDLE"})
    assert [m["path"] for m in r["matches"]] == ["long.txt"]
    assert len(r["matches"][0]["text"]) == fs.LINE_TEXT_MAX


def test_grep_never_opens_denied_files(h: Harness) -> None:
    """A denied FIFO: had grep opened it for reading, a non-blocking writer could connect."""
    os.mkfifo(h.root / ".env")
    opened = threading.Event()
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            try:
                fd = os.open(h.root / ".env", os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                continue
            os.close(fd)
            opened.set()
            return

    (h.root / "x.txt").write_text("x\n")
    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(30):
            h.call("fs.grep", {"pattern": "x"})
    finally:
        stop.set()
        t.join()
    assert not opened.is_set()


def test_grep_cancel_stops_the_thread(h: Harness) -> None:
    for i in range(300):
        (h.root / f"f{i}.txt").write_text("abc\n" * 1000)

    async def main() -> None:
        task = asyncio.create_task(REGISTRY["fs.grep"].handler(h.ctx(), {"pattern": "(a|b|c)*z"}))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def build_10k(root: Path) -> None:
    for d in range(2000):
        p = root / f"pkg{d // 100:02d}" / f"mod{d % 100:02d}"
        p.mkdir(parents=True)
        for f in range(5):
            body = "".join(f"def f_{d}_{f}_{i}(x):\n    return x + {i}\n" for i in range(20))
            if (d * 5 + f) % 97 == 0:
                body += "# NEEDLE here\n"
            (p / f"file{f}.py").write_text(body)
    (root / ".gitignore").write_text("*.pyc\n")


def test_grep_10k_files_fast(h: Harness) -> None:
    build_10k(h.root)
    t0 = time.perf_counter()
    r = h.call("fs.grep", {"pattern": "NEEDLE"})
    elapsed = time.perf_counter() - t0
    assert r["files_searched"] == 10001  # and the .gitignore
    assert len(r["matches"]) == 104
    print(f"grep over 10k files: {elapsed:.3f}s")
    assert elapsed < 2.0


# -- fs.delete ---------------------------------------------------------------------------------


def test_delete_file_snapshots(h: Harness) -> None:
    (h.root / "f.txt").write_text("content")
    assert h.call("fs.delete", {"path": "f.txt"})["deleted"] is True
    assert not (h.root / "f.txt").exists()
    (row,) = h.snaps.history(path="f.txt")
    assert (row.op, row.prev_sha256, row.new_sha256) == ("delete", sha(b"content"), None)
    assert h.snaps.blob(row.prev_sha256) == b"content"


def test_delete_directory(h: Harness) -> None:
    make_project(h.root)
    (h.root / ".env").unlink()
    (h.root / "src" / ".env.local").unlink()
    assert h.error("fs.delete", {"path": "src"}).code == EISDIR
    r = h.call("fs.delete", {"path": "src", "recursive": True})
    assert r == {"deleted": True, "files": 4}
    assert not (h.root / "src").exists()
    rows = {r.path: r for r in h.snaps.history()}
    assert h.snaps.blob(rows["src/app/main.py"].prev_sha256 or "") == b"import os\nTODO = 1\n"
    assert rows["src"].extra == {"type": "dir"}
    assert h.error("fs.delete", {"path": "src"}).code == ENOENT


def test_delete_never_follows_links(trap: Harness) -> None:
    outside_before = tree_state(trap.tmp / "outside")
    trap.call("fs.delete", {"path": "out_rel"})
    trap.call("fs.delete", {"path": "to_passwd"})
    (trap.root / "tree").mkdir()
    os.symlink("../../outside", trap.root / "tree" / "link_out")
    os.symlink(str(trap.tmp / "outside" / "secret.txt"), trap.root / "tree" / "abs_file")
    trap.call("fs.delete", {"path": "tree", "recursive": True})
    assert not (trap.root / "tree").exists() and not (trap.root / "out_rel").exists()
    assert tree_state(trap.tmp / "outside") == outside_before
    assert Path("/etc/passwd").exists()
    (row,) = trap.snaps.history(path="tree/link_out")
    assert row.extra == {"type": "symlink", "target": "../../outside"}


@pytest.mark.parametrize(
    ("path", "code"),
    [
        (".env", EACCES),
        ("sub", EACCES),  # holds sub/.env.local
        ("keys", EACCES),  # holds keys/id_rsa
        (".kite", EACCES),
        (".kite/bridge.toml", EACCES),
        ("hard", EACCES),
        (".", EACCES),
        ("", EINVAL),
        ("../outside/secret.txt", EACCES),
        ("out_rel/secret.txt", EACCES),
        ("nope", ENOENT),
    ],
)
def test_delete_refusals_change_nothing(trap: Harness, path: str, code: str) -> None:
    before = tree_state(trap.tmp)
    before.pop("state", None)
    err = trap.error("fs.delete", {"path": path, "recursive": True})
    assert err.code == code
    after = tree_state(trap.tmp)
    after.pop("state", None)
    assert {k: v for k, v in after.items() if not k.startswith("state")} == {
        k: v for k, v in before.items() if not k.startswith("state")
    }


def test_delete_snapshot_cap(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "SNAPSHOT_DELETE_MAX_FILES", 2)
    for i in range(5):
        (h.root / "d" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (h.root / "d" / f"{i}.txt").write_text(str(i))
    r = h.call("fs.delete", {"path": "d", "recursive": True})
    assert r == {"deleted": True, "files": 5, "snapshot_complete": False, "unsaved_files": 3}
    saved = [row for row in h.snaps.history() if row.prev_sha256]
    assert len(saved) == 2


# -- fs.move -----------------------------------------------------------------------------------


def test_move_file_and_overwrite(h: Harness) -> None:
    (h.root / "a.txt").write_text("A")
    (h.root / "b.txt").write_text("B")
    assert h.call("fs.move", {"from": "a.txt", "to": "new/dir/a2.txt"})["moved"] is True
    assert (h.root / "new/dir/a2.txt").read_text() == "A" and not (h.root / "a.txt").exists()
    assert h.error("fs.move", {"from": "new/dir/a2.txt", "to": "b.txt"}).code == EEXIST
    assert (h.root / "b.txt").read_text() == "B"
    r = h.call("fs.move", {"from": "new/dir/a2.txt", "to": "b.txt", "overwrite": True})
    assert r["moved"] is True and (h.root / "b.txt").read_text() == "A"
    rows = h.snaps.history(path="b.txt")
    assert rows[0].prev_sha256 == sha(b"B") and rows[0].new_sha256 == sha(b"A")
    assert h.snaps.blob(sha(b"B")) == b"B"
    assert rows[0].extra == {"from": "new/dir/a2.txt", "type": "file"}
    (src_row,) = h.snaps.history(path="a.txt")
    assert (src_row.prev_sha256, src_row.new_sha256) == (sha(b"A"), None)


def test_move_directory(h: Harness) -> None:
    (h.root / "d1" / "x").mkdir(parents=True)
    (h.root / "d1" / "x" / "f").write_text("f")
    h.call("fs.move", {"from": "d1", "to": "d2"})
    assert (h.root / "d2" / "x" / "f").read_text() == "f"
    assert h.error("fs.move", {"from": "d2", "to": "d2/x/inner"}).code == EINVAL
    (h.root / "d3").mkdir()
    assert h.error("fs.move", {"from": "d2", "to": "d3", "overwrite": True}).code == EEXIST
    (h.root / "file").write_text("x")
    assert h.error("fs.move", {"from": "d2", "to": "file", "overwrite": True}).code == ENOTDIR
    assert h.error("fs.move", {"from": "d2", "to": "d2"}).code == EINVAL


@pytest.mark.parametrize(
    ("src", "dst", "code"),
    [
        ("a/b/f.txt", "../f.txt", EACCES),
        ("a/b/f.txt", "/tmp/f.txt", EACCES),
        ("a/b/f.txt", "out_rel/f.txt", EACCES),
        ("a/b/f.txt", ".env", EACCES),
        ("a/b/f.txt", "x/id_rsa", EACCES),
        ("a/b/f.txt", ".kite/bridge.toml", EACCES),
        (".env", "env.txt", EACCES),
        ("sub", "pub", EACCES),  # carries sub/.env.local
        (".kite", "k", EACCES),
        ("../outside/secret.txt", "s.txt", EACCES),
        ("out_rel/secret.txt", "s.txt", EACCES),
        ("hard", "h2", EACCES),
        ("nope", "x", ENOENT),
    ],
)
def test_move_refusals_change_nothing(trap: Harness, src: str, dst: str, code: str) -> None:
    before = tree_state(trap.root), tree_state(trap.tmp / "outside")
    err = trap.error("fs.move", {"from": src, "to": dst, "overwrite": True})
    assert err.code == code
    assert (tree_state(trap.root), tree_state(trap.tmp / "outside")) == before


def test_move_symlink_moves_the_link(trap: Harness) -> None:
    trap.call("fs.move", {"from": "to_passwd", "to": "moved_link"})
    assert os.readlink(trap.root / "moved_link") == "/etc/passwd"
    assert trap.error("fs.read", {"path": "moved_link"}).code == EACCES


# -- fs.mkdir ----------------------------------------------------------------------------------


def test_mkdir(h: Harness) -> None:
    assert h.call("fs.mkdir", {"path": "a/b/c"}) == {"created": True}
    assert (h.root / "a" / "b" / "c").is_dir()
    assert h.call("fs.mkdir", {"path": "a/b/c"}) == {"created": False}
    (h.root / "f").write_text("x")
    assert h.error("fs.mkdir", {"path": "f"}).code == EEXIST
    assert h.error("fs.mkdir", {"path": "p/q", "parents": False}).code == ENOENT
    assert not (h.root / "p").exists()
    for bad in ("../x", "/tmp/kite-x", ".ssh", "a/.aws/x", ".kite/bridge.toml"):
        assert h.error("fs.mkdir", {"path": bad}).code == EACCES, bad
    assert not Path("/tmp/kite-x").exists() and not (h.tmp / "x").exists()
    assert not (h.root / ".ssh").exists() and not (h.root / "a" / ".aws").exists()


def test_mkdir_through_links(trap: Harness) -> None:
    assert trap.error("fs.mkdir", {"path": "out_rel/newdir"}).code == EACCES
    assert not (trap.tmp / "outside" / "newdir").exists()
    assert trap.call("fs.mkdir", {"path": "in_rel/newdir"}) == {"created": True}
    assert (trap.root / "a" / "b" / "newdir").is_dir()


def test_write_cancelled_mid_stream_leaves_nothing(h: Harness) -> None:
    (h.root / "f").write_bytes(b"old")

    async def main() -> None:
        started = asyncio.Event()
        ctx = h.ctx()

        async def slow_chunks() -> AsyncIterator[bytes]:
            yield b"partial data"
            started.set()
            await asyncio.Event().wait()  # the client never sends the final chunk
            yield b""  # pragma: no cover

        ctx.recv_chunks = slow_chunks
        task = asyncio.create_task(REGISTRY["fs.write"].handler(ctx, {"path": "f", "binary": True}))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (h.root / "f").read_bytes() == b"old"
    assert no_temp_files(h.root)
    assert h.snaps.history() == []


def test_root_and_dotdot_targets_have_no_side_effects(h: Harness) -> None:
    for op, args in [
        ("fs.mkdir", {"path": "x/.."}),
        ("fs.write", {"path": "y/..", "content": "z"}),
        ("fs.delete", {"path": "w/..", "recursive": True}),
        ("fs.move", {"from": "a", "to": "v/.."}),
    ]:
        assert h.error(op, args).code in (EACCES, ENOENT), op
    assert list(h.root.iterdir()) == []
