"""Undo/redo of a step's file changes from the bridge's snapshots: `fs.restore`/`fs.history`
on a real bridge, then `Agent.undo()`/`redo()` and `/undo`/`/redo` through the local router."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.agent import UndoError
from agent_core.agent.local import LocalProvider
from agent_core.agent.loop import Agent
from agent_core.agent.permissions import PermissionGate
from agent_core.rpc.errors import RpcError
from tests.test_agent_loop import ScriptedProvider, call, calls, says
from tests.test_tools import BridgeKey, bridge_with_key, connected


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def bk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeKey]:
    with bridge_with_key(tmp_path_factory.mktemp("undo")) as b:
        yield b


@pytest.fixture
def ws(bk: BridgeKey) -> Path:
    bk.reset_workspace()
    return bk.workspace


# -- the wire ops --------------------------------------------------------------------------------


def test_restore_puts_back_a_snapshot_guarded_and_snapshotted(bk: BridgeKey, ws: Path) -> None:
    f = ws / "a.txt"

    async def go() -> None:
        async with connected(bk) as c:
            await c.call("fs.write", {"path": "a.txt", "content": "one\n"})
            two = {"path": "a.txt", "content": "two\n", "if_match": sha("one\n")}
            await c.call("fs.write", two)
            f.chmod(0o600)
            # Wrong guard: refused, nothing changes.
            with pytest.raises(RpcError) as info:
                await c.call(
                    "fs.restore", {"path": "a.txt", "sha256": sha("one\n"), "if_match": sha("x")}
                )
            assert info.value.code == "ECONFLICT"
            assert info.value.details == {"current_sha256": sha("two\n")}
            assert f.read_text() == "two\n"
            # Right guard: the old content is back, mode kept, and the restore is in the history.
            res = await c.call(
                "fs.restore", {"path": "a.txt", "sha256": sha("one\n"), "if_match": sha("two\n")}
            )
            assert res == {
                "path": "a.txt",
                "sha256": sha("one\n"),
                "changed": True,
                "created": False,
                "deleted": False,
            }
            assert f.read_text() == "one\n" and (f.stat().st_mode & 0o777) == 0o600
            hist = (await c.call("fs.history", {"path": "a.txt", "available": True}))["entries"]
            assert [(e["op"], e["prev_sha256"], e["new_sha256"]) for e in hist] == [
                ("restore", sha("two\n"), sha("one\n")),
                ("write", sha("one\n"), sha("two\n")),
                ("write", None, sha("one\n")),
            ]
            assert all(e["prev_available"] for e in hist)
            # Again: already so, a no-op that succeeds (a retried request is harmless).
            again = await c.call(
                "fs.restore", {"path": "a.txt", "sha256": sha("one\n"), "if_match": sha("one\n")}
            )
            assert again["changed"] is False
            # "absent" deletes (after keeping the content), and it can be brought back.
            gone = await c.call(
                "fs.restore", {"path": "a.txt", "sha256": "absent", "if_match": sha("one\n")}
            )
            assert gone["deleted"] is True and not f.exists()
            back = await c.call(
                "fs.restore", {"path": "a.txt", "sha256": sha("two\n"), "if_match": "absent"}
            )
            assert back["created"] is True and f.read_text() == "two\n"

    asyncio.run(go())


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"path": "a.txt", "sha256": "0" * 64, "if_match": "absent"}, "ENOENT"),  # no such blob
        ({"path": "a.txt", "sha256": "absent"}, "EINVAL"),  # the guard is required
        ({"path": "a.txt", "sha256": "nothex", "if_match": "absent"}, "EINVAL"),
        ({"path": "a.txt", "sha256": "absent", "if_match": "absent", "x": 1}, "EINVAL"),
        ({"path": "../out.txt", "sha256": "absent", "if_match": "absent"}, "EACCES"),
    ],
)
def test_restore_refuses_bad_input_and_changes_nothing(
    bk: BridgeKey, ws: Path, args: dict[str, Any], code: str
) -> None:
    async def go() -> None:
        async with connected(bk) as c:
            with pytest.raises(RpcError) as info:
                await c.call("fs.restore", args)
            assert info.value.code == code, info.value

    asyncio.run(go())
    assert list(ws.iterdir()) == []


# -- the agent -------------------------------------------------------------------------------


def two_steps() -> ScriptedProvider:
    """Step 1 edits a.txt and creates b.txt (one wave); step 2 edits a.txt again."""
    return ScriptedProvider(
        calls(
            call("c1", "edit", file_path="a.txt", old_string="base", new_string="step1"),
            call("c2", "write", file_path="b.txt", content="new file\n"),
        ),
        calls(call("c3", "edit", file_path="a.txt", old_string="step1", new_string="step2")),
        says("done"),
    )


def test_agent_undo_redo_steps(bk: BridgeKey, ws: Path) -> None:
    a, b = ws / "a.txt", ws / "b.txt"
    a.write_text("base\n")

    async def go() -> None:
        async with connected(bk) as c:
            agent = Agent(two_steps(), c, gate=PermissionGate(yes=True))
            assert not agent.can_undo and await agent.undo() == []
            assert (await agent.run("change things")).ok
            assert a.read_text() == "step2\n" and b.read_text() == "new file\n"
            assert agent.can_undo and not agent.can_redo
            assert agent.undo_preview() == ["a.txt"]

            assert await agent.undo() == ["a.txt"]  # step 2 only
            assert a.read_text() == "step1\n" and b.exists()
            assert agent.undo_preview() == ["a.txt", "b.txt"] and agent.redo_preview() == ["a.txt"]
            assert sorted(await agent.undo()) == ["a.txt", "b.txt"]  # step 1: b.txt removed
            assert a.read_text() == "base\n" and not b.exists()
            assert not agent.can_undo and await agent.undo() == []

            assert sorted(await agent.redo()) == ["a.txt", "b.txt"]  # oldest first: step 1
            assert a.read_text() == "step1\n" and b.read_text() == "new file\n"
            assert await agent.redo() == ["a.txt"]
            assert a.read_text() == "step2\n"
            assert not agent.can_redo and await agent.redo() == []

            # Changed on the host since the step: refused as a whole, nothing restored.
            await agent.undo()
            await agent.undo()
            assert not b.exists()
            await agent.redo()  # step 1 back: a=step1, b exists
            b.write_text("edited by the user\n")
            with pytest.raises(UndoError) as info:
                await agent.undo()
            assert info.value.code == "ECONFLICT" and info.value.paths == ["b.txt"]
            assert "b.txt" in str(info.value) and "nothing was restored" in str(info.value)
            assert a.read_text() == "step1\n" and b.read_text() == "edited by the user\n"
            assert agent.can_undo  # still undoable once the conflict is resolved
            b.write_text("new file\n")
            assert sorted(await agent.undo()) == ["a.txt", "b.txt"]
            assert a.read_text() == "base\n" and not b.exists()

    asyncio.run(go())


def test_a_new_change_drops_redo_and_the_journal_survives_a_save(bk: BridgeKey, ws: Path) -> None:
    from agent_core.agent.session import Session

    (ws / "a.txt").write_text("base\n")

    async def go() -> None:
        async with connected(bk) as c:
            agent = Agent(two_steps(), c, gate=PermissionGate(yes=True))
            await agent.run("go")
            await agent.undo()
            assert agent.can_redo
            agent.provider = ScriptedProvider(
                calls(call("c9", "write", file_path="c.txt", content="c\n")), says("ok")
            )
            await agent.run("another")
            assert not agent.can_redo  # as in an editor: the undone step is gone
            # The journal round-trips through the saved session form.
            again = Agent(agent.provider, c, session=Session.from_json(agent.session.to_json()))
            assert again.undo_preview() == ["c.txt"]
            assert await again.undo() == ["c.txt"]
            assert await again.undo() == ["a.txt", "b.txt"]
            assert (ws / "a.txt").read_text() == "base\n"

    asyncio.run(go())


def test_slash_undo_and_redo_through_the_local_router(bk: BridgeKey, ws: Path) -> None:
    (ws / "a.txt").write_text("base\n")

    async def go() -> None:
        async with connected(bk) as c:
            agent = Agent(
                two_steps(), c, gate=PermissionGate(yes=True), command_provider=LocalProvider()
            )
            await agent.run("go")
            res = await agent.run("/undo")
            assert res.ok, res
            assert "Undid the edit of a.txt" in res.text
            assert (ws / "a.txt").read_text() == "step1\n"
            res = await agent.run("/redo")
            assert res.ok and "Redid" in res.text
            assert (ws / "a.txt").read_text() == "step2\n"
            (ws / "a.txt").write_text("user\n")
            res = await agent.run("/undo")
            assert "changed again on the host" in res.text, res
            assert (ws / "a.txt").read_text() == "user\n"

    asyncio.run(go())
