"""Sessions on the bridge: the SQLite store, the `session.*` ops over a real bridge, the
device-side `SessionSync`, and `kite run --continue` after the bridge was killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_core.agent import sync as sync_module
from agent_core.agent.session import Session
from agent_core.agent.sync import MemoryCache, SessionSync, resume, sha256_hex, write_once
from agent_core.client import ChannelClosed
from agent_core.llm.types import Message, TextPart
from agent_core.rpc.errors import ECONFLICT, EINVAL, ENOENT, RpcError
from bridge.sessions import DB_FILE, SessionStore
from tests.harness import REPO, BridgeProcess
from tests.test_kite_run import kite_run
from tests.test_tools import bridge_with_key, connected


def msg(role: str, text: str) -> dict[str, Any]:
    return Message(role, [TextPart(text)]).to_json()  # type: ignore[arg-type]


# -- the store ------------------------------------------------------------------------------


def test_append_is_idempotent_and_a_conflicting_seq_is_econflict(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    store.create("s1", title="first", model="local")
    assert (tmp_path / DB_FILE).stat().st_mode & 0o777 == 0o600
    assert store.append("s1", [(0, msg("user", "hi")), (1, msg("assistant", "hello"))]) == 2
    # A retry of the same append (its reply was lost) is a no-op success; new ones go on.
    assert store.append("s1", [(0, msg("user", "hi")), (1, msg("assistant", "hello"))]) == 2
    assert store.append("s1", [(1, msg("assistant", "hello")), (2, msg("user", "more"))]) == 3
    with pytest.raises(RpcError) as exc:  # another device wrote seq 2: this cache is stale
        store.append("s1", [(2, msg("user", "different"))])
    assert exc.value.code == ECONFLICT and exc.value.details == {"next_seq": 3, "seq": 2}
    with pytest.raises(RpcError) as exc:  # a gap
        store.append("s1", [(5, msg("user", "x"))])
    assert exc.value.code == ECONFLICT
    # A failed append leaves nothing behind (one transaction).
    with pytest.raises(RpcError):
        store.append("s1", [(3, msg("user", "ok")), (2, msg("user", "bad"))])
    info, messages = store.get("s1")
    assert info["messages"] == 3 and [m["seq"] for m in messages] == [0, 1, 2]
    assert store.get("s1", after_seq=1)[1] == [{"seq": 2, "message": msg("user", "more")}]
    assert store.create("s1", title="ignored")["title"] == "first"  # a retried create
    store.create("s2")
    assert [s["id"] for s in store.list()] == ["s2", "s1"]
    store.rename("s1", "renamed")
    assert [s["id"] for s in store.list()] == ["s1", "s2"]  # newest first
    store.delete("s2")
    assert [s["id"] for s in store.list()] == ["s1"]
    for call in (lambda: store.get("s2"), lambda: store.append("s2", [(0, msg("user", "x"))])):
        with pytest.raises(RpcError) as exc:
            call()
        assert exc.value.code == ENOENT
    store.close()


KILL_SCRIPT = """
import sys
from pathlib import Path
from bridge.sessions import SessionStore
store = SessionStore(Path(sys.argv[1]))
store.create("k")
big = "x" * 20000
i = 0
while True:
    batch = [(i + j, {"role": "user", "parts": [{"type": "text", "text": f"{i + j} {big}"}]})
             for j in range(3)]
    i = store.append("k", batch)
    print(i, flush=True)
"""


def test_kill_9_during_appends_leaves_whole_messages(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    acked = 0
    while acked < 60:
        line = proc.stdout.readline()
        assert line, "the append loop died"
        acked = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    store = SessionStore(tmp_path)
    _, messages = store.get("k")
    # Every acknowledged append survived; what is there is whole batches of whole messages.
    assert len(messages) >= acked and len(messages) % 3 == 0
    for i, m in enumerate(messages):
        assert m["seq"] == i
        assert m["message"]["parts"][0]["text"] == f"{i} " + "x" * 20000
    assert sqlite3.connect(tmp_path / DB_FILE).execute("PRAGMA integrity_check").fetchone() == (
        "ok",
    )
    store.close()


# -- the ops and SessionSync through a real bridge -----------------------------------------


class DropsReplies:
    """A client whose `session.append` reaches the bridge but whose reply is lost."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def call(self, op: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        result = await self.client.call(op, args, **kw)
        if op == "session.append":
            raise ChannelClosed("connection dropped")
        return result


def test_session_ops_sync_and_resume_through_a_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main(bk: Any) -> None:
        async with connected(bk) as client:
            created = await client.call("session.create", {"id": "abc-1", "title": "demo"})
            assert created["id"] == "abc-1" and created["messages"] == 0
            assert created["workspace"] == str(bk.workspace.resolve())
            r = await client.call(
                "session.append",
                {"id": "abc-1", "messages": [{"seq": 0, "message": msg("user", "hi")}]},
            )
            assert r == {"next_seq": 1}
            with pytest.raises(RpcError) as exc:
                await client.call(
                    "session.append",
                    {"id": "abc-1", "messages": [{"seq": 0, "message": msg("user", "other")}]},
                )
            assert exc.value.code == ECONFLICT and exc.value.details["next_seq"] == 1
            with pytest.raises(RpcError) as exc:
                await client.call("session.get", {"id": "../etc"})
            assert exc.value.code == EINVAL
            # Text SQLite cannot store (a lone surrogate) is bad input, and changes nothing.
            for call, args in (
                ("session.create", {"id": "abc-2", "title": "bad \ud800"}),
                ("session.create", {"id": "abc-2", "model": "\udfff"}),
                ("session.rename", {"id": "abc-1", "title": "\ud800"}),
            ):
                with pytest.raises(RpcError) as exc:
                    await client.call(call, args)
                assert exc.value.code == EINVAL and "Unicode" in exc.value.message, call
            await client.call("session.rename", {"id": "abc-1", "title": "renamed"})
            listed = (await client.call("session.list"))["sessions"]
            assert [(s["id"], s["title"], s["messages"]) for s in listed] == [
                ("abc-1", "renamed", 1)
            ]
            await client.call("session.delete", {"id": "abc-1"})
            assert (await client.call("session.list"))["sessions"] == []

            # SessionSync: the reply of an append is lost; the retry is a no-op success.
            session = Session(title="synced")
            session.messages.append(Message("user", [TextPart("one")]))
            cache = MemoryCache()
            sync = SessionSync(DropsReplies(client), session, cache=cache, model="local")
            assert await sync.push() is False and sync.pending == 1 and sync.error is None
            sync.client = client  # "reconnected"
            assert await sync.push() is True and sync.synced == 1
            session.messages.append(Message("assistant", [TextPart("two")]))
            assert await sync.push() is True
            got = await client.call("session.get", {"id": session.id})
            assert [m["seq"] for m in got["messages"]] == [0, 1]
            assert got["session"]["title"] == "synced"

            page = await client.call("session.get", {"id": session.id, "limit": 1})
            assert [m["seq"] for m in page["messages"]] == [0] and page["more"] is True
            with pytest.raises(RpcError) as exc:
                await client.call("session.get", {"id": session.id, "after": 0})
            assert exc.value.code == EINVAL and "after" in exc.value.message

            # Another device resumes it (no cache, one message per page), and a stale cache
            # catches up.
            monkeypatch.setattr(sync_module, "GET_PAGE", 1)
            other = await resume(client, session.id)
            assert [m.text() for m in other.session.messages] == ["one", "two"]
            stale = MemoryCache()
            stale.save(session.id, {**session.to_json(), "synced": 1})
            session.messages.append(Message("user", [TextPart("three")]))
            await sync.push()
            resumed = await resume(client, session.id, cache=stale)
            assert [m.text() for m in resumed.session.messages] == ["one", "two", "three"]
            assert stale.load(session.id)["synced"] == 3  # type: ignore[index]

            # A client restart: its cache holds a message it never got acknowledged.
            crashed = MemoryCache()
            crashed.save(session.id, {**resumed.session.to_json(), "synced": 3})
            data = crashed.load(session.id)
            assert data is not None
            data["messages"].append(msg("assistant", "four"))
            again = await resume(client, session.id, cache=crashed)
            assert again.synced == 3 and again.pending == 1
            assert await again.push() is True
            got = await client.call("session.get", {"id": session.id, "after_seq": 2})
            assert [m["message"] for m in got["messages"]] == [msg("assistant", "four")]
            # ... and one whose append landed but whose reply was lost: nothing is sent twice.
            crashed.save(session.id, {**again.session.to_json(), "synced": 3})
            landed = await resume(client, session.id, cache=crashed)
            assert landed.synced == 4 and landed.pending == 0
            resumed = landed
            session.messages.append(Message("assistant", [TextPart("four")]))
            sync.synced = 4

            # Two devices append different messages at the same seq: the late one stops syncing.
            resumed.session.messages.append(Message("user", [TextPart("from B")]))
            session.messages.append(Message("user", [TextPart("from A")]))
            assert await sync.push() is True
            assert await resumed.push() is False and "changed elsewhere" in str(resumed.error)

            # A write retried with the same if_match is applied once.
            first = await client.call("fs.write", {"path": "f.txt", "content": "v1\n"})
            ok = await write_once(client, "f.txt", "v2\n", first["sha256"])
            assert ok["sha256"] == sha256_hex("v2\n") and "replayed" not in ok
            again = await write_once(client, "f.txt", "v2\n", first["sha256"])
            assert again["replayed"] is True
            assert (bk.workspace / "f.txt").read_text() == "v2\n"
            with pytest.raises(RpcError) as exc:  # a different write over it is a real conflict
                await write_once(client, "f.txt", "v3\n", first["sha256"])
            assert exc.value.code == ECONFLICT
            assert (bk.workspace / "f.txt").read_text() == "v2\n"

    with bridge_with_key(tmp_path) as bk:
        asyncio.run(main(bk))


# -- acceptance: kill -9 the bridge, restart it, continue ----------------------------------


def _texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], json.dumps(m.get("content"))) for m in body["messages"]]


def test_kite_run_continues_after_the_bridge_is_killed(tmp_path: Path) -> None:
    ms = pytest.importorskip("tests.model_server")
    turns = [
        ms.Turn(text="Noted: the code word is PELICAN."),
        ms.Turn(text="The code word was PELICAN."),
        ms.Turn(text="Third answer."),
    ]
    with ms.ScriptedModelServer(turns).in_thread() as srv:
        env = {"OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-test"}
        with bridge_with_key(tmp_path, env) as bk:
            state = bk.proc.state_dir
            r = kite_run(
                "--model", "openai/gpt-test", "remember the code word PELICAN",
                cwd=bk.workspace, state=state,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert r.stdout == "Noted: the code word is PELICAN.\n"
            bk.proc.stop(signal.SIGKILL)  # mid-session, without any shutdown
            restarted = BridgeProcess(bk.workspace, state, env=env)
            try:
                listed = subprocess.run(
                    [sys.executable, "-m", "bridge", "sessions", "--json", "--state-dir",
                     str(state)],
                    capture_output=True, text=True, timeout=30, cwd=bk.workspace,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )  # fmt: skip
                assert listed.returncode == 0, listed.stderr
                sessions = json.loads(listed.stdout)
                assert len(sessions) == 1 and sessions[0]["messages"] == 2
                assert sessions[0]["title"] == "remember the code word PELICAN"
                sid = sessions[0]["id"]

                r = kite_run(
                    "--model", "openai/gpt-test", "--continue", "what was the code word?",
                    cwd=bk.workspace, state=state,
                )  # fmt: skip
                assert r.returncode == 0, r.stderr
                assert r.stdout == "The code word was PELICAN.\n"
                sent = _texts(srv.requests[1].body)
                assert sent[1:] == [
                    ("user", json.dumps("remember the code word PELICAN")),
                    ("assistant", json.dumps("Noted: the code word is PELICAN.")),
                    ("user", json.dumps("what was the code word?")),
                ]
                # --session ID resumes it too; an unknown id is a one-line error.
                r = kite_run(
                    "--model", "openai/gpt-test", "--session", sid, "and now?",
                    cwd=bk.workspace, state=state,
                )  # fmt: skip
                assert r.returncode == 0, r.stderr
                assert len(srv.requests[2].body["messages"]) == 1 + 5
                r = kite_run("--session", "nosuch", "hi", cwd=bk.workspace, state=state)
                assert (
                    r.returncode == 1
                    and r.stderr == "kite: --session: no session nosuch on this bridge\n"
                )
                store = SessionStore(state)
                assert store.info(sid)["messages"] == 6
                store.close()
            finally:
                restarted.stop()


def test_kite_chat_continues_a_kite_run_session(tmp_path: Path) -> None:
    """No model: the local router; the in-process bridge of each command shares the state dir."""
    ws, state = tmp_path / "ws", tmp_path / "state"
    ws.mkdir()
    (ws / "a.txt").write_text("alpha\n")
    r = kite_run("/read a.txt", cwd=ws, state=state)
    assert r.returncode == 0 and r.stdout == "alpha\n", r.stderr
    store = SessionStore(state)
    [first] = store.list()
    store.close()
    chat = subprocess.run(
        [sys.executable, "-m", "bridge", "chat", "--continue", "--state-dir", str(state)],
        input="/ls\n/exit\n", capture_output=True, text=True, timeout=60, cwd=ws,
        env={**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(tmp_path / "cfg")},
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    assert f"resumed session {first['id']}" in chat.stderr
    store = SessionStore(state)
    [after] = store.list()
    _, messages = store.get(first["id"])
    store.close()
    assert after["id"] == first["id"] and after["messages"] > first["messages"]
    texts = [json.dumps(m["message"]) for m in messages]
    assert "/read a.txt" in texts[0] and any("/ls" in t for t in texts[first["messages"] :])
