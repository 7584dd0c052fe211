"""The `local` provider: the deterministic intent router, alone and driving the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.agent.local import HELP, LocalProvider, route
from agent_core.agent.loop import Agent
from agent_core.agent.permissions import PermissionGate
from agent_core.agent.session import Session
from agent_core.llm.types import Message, ModelRequest, TextPart, ToolResultPart, TurnEnd
from tests.test_agent_loop import ScriptedProvider, says
from tests.test_tools import BridgeKey, bridge_with_key, call_tool, connected


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ("/read README.md", [("read", {"file_path": "README.md"})]),
        ("/read src/a.py 10-20", [("read", {"file_path": "src/a.py", "offset": 10, "limit": 11})]),
        ("open README.md", [("read", {"file_path": "README.md"})]),
        ("please show me the file docs/x.md", [("read", {"file_path": "docs/x.md"})]),
        (
            "read a.py and b.py",
            [("read", {"file_path": "a.py"}), ("read", {"file_path": "b.py"})],
        ),
        (
            "cat setup.cfg lines 3 to 4",
            [("read", {"file_path": "setup.cfg", "offset": 3, "limit": 2})],
        ),
        ("/ls", [("list", {})]),
        ("/ls src", [("list", {"path": "src"})]),
        ("list files", [("list", {})]),
        ("what's in src?", [("list", {"path": "src"})]),
        ("/grep TODO", [("grep", {"pattern": "TODO"})]),
        ('/grep "def main" src', [("grep", {"pattern": "def main", "path": "src"})]),
        ("search for TODO", [("grep", {"pattern": "TODO"})]),
        ("find foo.bar in lib", [("grep", {"pattern": r"foo\.bar", "path": "lib"})]),
        ("/glob *.py", [("glob", {"pattern": "*.py"})]),
        ("find files named *.md", [("glob", {"pattern": "*.md"})]),
        ("/run echo hi", [("bash", {"command": "echo hi"})]),
        ("run `make build`", [("bash", {"command": "make build"})]),
        ("$ ls -la", [("bash", {"command": "ls -la"})]),
        ("/diff", [("diff", {})]),
        ("show me the diff", [("diff", {})]),
        ("what changed?", [("diff", {})]),
        ("/undo", [("undo", {})]),
        ("undo the last change", [("undo", {})]),
    ],
)
def test_route(text: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    assert route(text).calls == calls


@pytest.mark.parametrize("text", ["run the tests", "Please run tests.", "/test", "run tests in x"])
def test_run_the_tests_probes_project_files_first(text: str) -> None:
    intent = route(text)
    assert intent.kind == "tests"
    assert [c[1]["pattern"] for c in intent.calls][:2] == ["./pyproject.toml", "./pytest.ini"]


@pytest.mark.parametrize(
    "text", ["add a --verbose flag to cli.py and run the tests", "open the pod bay doors", "/frob"]
)
def test_unknown_requests_get_an_honest_answer(text: str) -> None:
    msg, stop = LocalProvider().respond([Message("user", [TextPart(text)])])
    assert stop == "error" and not msg.tool_calls()
    assert HELP in msg.text() and "--model" in msg.text()
    msg, stop = LocalProvider().respond([Message("user", [TextPart("help")])])
    assert stop == "end_turn" and msg.text() == HELP


def test_it_is_a_provider_and_summarises_tool_results() -> None:
    lp = LocalProvider()
    user = Message("user", [TextPart("/read a.txt")])

    async def turn(messages: list[Message]) -> list[Any]:
        return [e async for e in lp.stream(ModelRequest("", "", messages, []))]

    (end,) = asyncio.run(turn([user]))
    assert isinstance(end, TurnEnd) and end.stop_reason == "tool_use"
    (c,) = end.message.tool_calls()
    result = Message(
        "tool", [ToolResultPart(c.id, "     1\tfirst\n     2\tsecond\n\n(End of file: 2 lines.)")]
    )
    events = asyncio.run(turn([user, end.message, result]))
    assert events[-1].stop_reason == "end_turn"
    assert events[-1].message.text() == "first\nsecond"  # a whole file shows as itself
    again = asyncio.run(turn([user, end.message, result]))
    assert again[-1].message.to_json() == events[-1].message.to_json()  # deterministic


@pytest.fixture(scope="module")
def bk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeKey]:
    with bridge_with_key(tmp_path_factory.mktemp("local")) as b:
        yield b


@pytest.fixture
def ws(bk: BridgeKey) -> Path:
    bk.reset_workspace()
    (bk.workspace / "README.md").write_text("# Demo\nTODO: write docs\n")
    return bk.workspace


def _run(
    bk: BridgeKey, *messages: str, yes: bool = False, session: Session | None = None
) -> list[Any]:
    async def main() -> list[Any]:
        async with connected(bk) as c:
            agent = Agent(LocalProvider(), c, session=session, gate=PermissionGate(yes=yes))
            return [await agent.run(m) for m in messages]

    return asyncio.run(main())


def test_local_commands_through_the_loop(bk: BridgeKey, ws: Path) -> None:
    read, ls, grep, refused = _run(bk, "/read README.md", "/ls", "search for TODO", "/run echo hi")
    assert read.reason == "end_turn" and read.text == "# Demo\nTODO: write docs"
    assert ls.text == "./\n  README.md"
    assert "README.md:\n  Line 2: TODO: write docs" in grep.text
    assert refused.reason == "end_turn" and "--yes" in refused.text
    assert [(r.tool, r.subject) for r in refused.refusals] == [("bash", "echo hi")]
    (ws / "n.txt").write_text("".join(f"{i}\n" for i in range(1, 31)))
    (part,) = _run(bk, "/read n.txt 3-5")
    assert part.text == "3\n4\n5\n\n(lines 3-5 of 30; more: /read n.txt 6)"
    (ran,) = _run(bk, "/run echo hi", yes=True)
    assert ran.text == "hi\n\n(exit code 0)" and ran.refusals == []


def test_run_the_tests_picks_the_command_from_the_project(bk: BridgeKey, ws: Path) -> None:
    (ws / "Makefile").write_text("test:\n\t@echo all 3 tests passed\n")
    (result,) = _run(bk, "run the tests", yes=True)
    assert result.steps == 3  # probe the project files, run make test, summarise
    assert result.text == "$ make test\nall 3 tests passed\n\n(exit code 0)"
    (ws / "Makefile").unlink()
    (result,) = _run(bk, "run the tests", yes=True)
    assert result.reason == "error" and "/run <command>" in result.text


def test_diff_and_undo_of_the_sessions_edits(bk: BridgeKey, ws: Path) -> None:
    session = Session()

    async def edit() -> None:
        async with connected(bk) as c:
            args = {"file_path": "README.md", "old_string": "TODO", "new_string": "DONE"}
            assert not (await call_tool(c, "edit", args, session=session)).is_error

    asyncio.run(edit())
    diff, undo, again = _run(bk, "/diff", "undo", "/undo", session=session)
    assert "-TODO: write docs\n+DONE: write docs" in diff.text
    assert undo.text == "Undid the edit of README.md."
    assert (ws / "README.md").read_text() == "# Demo\nTODO: write docs\n"
    assert again.text.startswith("Nothing to undo")


def test_slash_commands_go_to_the_router_whatever_the_model(bk: BridgeKey, ws: Path) -> None:
    model = ScriptedProvider(says("a model answer"))

    async def main() -> list[Any]:
        async with connected(bk) as c:
            agent = Agent(model, c, command_provider=LocalProvider())
            return [await agent.run("/read README.md"), await agent.run("hello")]

    local, remote = asyncio.run(main())
    assert local.text == "# Demo\nTODO: write docs" and remote.text == "a model answer"
    assert len(model.requests) == 1  # the model saw the whole conversation only once asked
    assert [m.role for m in model.requests[0].messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
