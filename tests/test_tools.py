"""The agent's tools against a real bridge subprocess (agent_core's own client), plus truncation.

Shared helpers here (`bridge_with_key`, `connected`, `call_tool`) are reused by the loop tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.agent.events import AgentEvent, ToolOutput
from agent_core.agent.permissions import PermissionGate
from agent_core.agent.session import Session
from agent_core.agent.tools import ToolContext, ToolResult, default_registry, execute
from agent_core.agent.truncate import cut_line, truncate
from agent_core.channel.crypto_cpython import CpythonCryptoBackend
from agent_core.channel.handshake import SUBPROTOCOL_CONNECT
from agent_core.client import KiteClient
from agent_core.transport.ws_cpython import open_websocket
from tests.harness import BridgeProcess, register_device

# -- helpers shared with test_agent_loop / test_local_provider ------------------------------


class BridgeKey:
    """A bridge subprocess plus a device key registered directly in its registry."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.workspace = root / "ws"
        self.workspace.mkdir()
        state = root / "state"
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})  # inherited by the bridge process
        try:
            self.proc = BridgeProcess(self.workspace, state)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.device_private, self.host_key = register_device(state, "tests")

    def reset_workspace(self) -> None:
        for p in self.workspace.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def stop(self) -> None:
        self.proc.stop()


@contextlib.contextmanager
def bridge_with_key(root: Path, env: dict[str, str] | None = None) -> Iterator[BridgeKey]:
    bk = BridgeKey(root, env)
    try:
        yield bk
    finally:
        bk.stop()


@contextlib.asynccontextmanager
async def connected(bk: BridgeKey) -> AsyncIterator[KiteClient]:
    backend = CpythonCryptoBackend()
    transport = await open_websocket(bk.proc.ws_url, SUBPROTOCOL_CONNECT)
    client = await KiteClient.handshake(
        transport,
        backend,
        mode=SUBPROTOCOL_CONNECT,
        static=backend.keypair_from_private_bytes(bk.device_private),
        host_key=bk.host_key,
    )
    try:
        yield client
    finally:
        await client.close()


REGISTRY = default_registry()


async def call_tool(
    client: Any,
    name: str,
    args: dict[str, Any],
    *,
    session: Session | None = None,
    gate: PermissionGate | None = None,
    events: list[AgentEvent] | None = None,
    ask_user: Any = None,
    call_id: str = "call_1",
) -> ToolResult:
    prepared, error = REGISTRY.prepare(name, args)
    assert error is None, error
    tool = REGISTRY.get(name)
    assert tool is not None

    async def emit(ev: AgentEvent) -> None:
        if events is not None:
            events.append(ev)

    ctx = ToolContext(
        client,
        session or Session(),
        gate or PermissionGate(yes=True),
        call_id,
        name,
        emit,
        ask_user,
    )
    return await execute(tool, prepared, ctx)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeKey]:
    with bridge_with_key(tmp_path_factory.mktemp("tools")) as b:
        yield b


@pytest.fixture
def ws(bk: BridgeKey) -> Path:
    bk.reset_workspace()
    return bk.workspace


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- read -----------------------------------------------------------------------------------


def test_read_numbers_lines_and_pages(bk: BridgeKey, ws: Path) -> None:
    (ws / "f.txt").write_text("".join(f"line {i}\n" for i in range(1, 6)))
    (ws / "empty.txt").write_text("")

    async def main() -> None:
        async with connected(bk) as c:
            s = Session()
            r = await call_tool(c, "read", {"file_path": "f.txt"}, session=s)
            assert r.output.split("\n")[:2] == ["     1\tline 1", "     2\tline 2"]
            assert r.output.endswith("(End of file: 5 lines.)")
            assert s.seen["f.txt"]  # the hash the model saw, for later writes
            r = await call_tool(c, "read", {"file_path": "./f.txt", "offset": 2, "limit": 2})
            assert r.output.split("\n")[:2] == ["     2\tline 2", "     3\tline 3"]
            assert "(Showing lines 2-3 of 5. Use offset=4 to read more.)" in r.output
            r = await call_tool(c, "read", {"file_path": "f.txt", "offset": 9})
            assert "past the end" in r.output
            r = await call_tool(c, "read", {"file_path": "empty.txt"})
            assert r.output == "(empty.txt is empty)"

    run(main())


def test_read_errors_are_actionable(bk: BridgeKey, ws: Path) -> None:
    (ws / "README.md").write_text("x\n")
    (ws / "sub").mkdir()
    (ws / "blob.bin").write_bytes(b"\xff\xfe\x00\x01")

    async def main() -> None:
        async with connected(bk) as c:
            r = await call_tool(c, "read", {"file_path": "READMe.md"})
            assert r.is_error and "Did you mean: README.md" in r.output
            r = await call_tool(c, "read", {"file_path": "sub"})
            assert r.is_error and "directory" in r.output
            r = await call_tool(c, "read", {"file_path": "blob.bin"})
            assert r.is_error and "binary" in r.output
            r = await call_tool(c, "read", {"file_path": "../outside.txt"})
            assert r.is_error and "EACCES" in r.output and "relative to the workspace" in r.output

    run(main())


def test_read_cuts_long_lines_and_keeps_within_the_byte_budget(bk: BridgeKey, ws: Path) -> None:
    (ws / "wide.txt").write_text("x" * 3000 + "\n")
    (ws / "big.txt").write_text("".join(f"{i:05d} " + "y" * 94 + "\n" for i in range(3000)))

    async def main() -> None:
        async with connected(bk) as c:
            r = await call_tool(c, "read", {"file_path": "wide.txt"})
            assert "[1000 more characters]" in r.output
            r = await call_tool(c, "read", {"file_path": "big.txt"})
            assert len(r.output.encode()) <= 52 * 1024
            shown = r.metadata["lines"]
            assert 400 < shown < 600
            assert f"Use offset={shown + 1} to read more." in r.output

    run(main())


# -- write / edit -----------------------------------------------------------------------------


def test_write_creates_and_guards_overwrites(bk: BridgeKey, ws: Path) -> None:
    async def main() -> None:
        async with connected(bk) as c:
            s = Session()
            r = await call_tool(
                c, "write", {"file_path": "new/dir/a.py", "content": "a = 1\n"}, session=s
            )
            assert not r.is_error and r.metadata["created"] and "+a = 1" in r.metadata["diff"]
            assert (ws / "new/dir/a.py").read_text() == "a = 1\n"
            (ws / "old.txt").write_text("keep me\n")
            r = await call_tool(c, "write", {"file_path": "old.txt", "content": "x"}, session=s)
            assert r.is_error and "read it before overwriting" in r.output
            await call_tool(c, "read", {"file_path": "old.txt"}, session=s)
            (ws / "old.txt").write_text("changed on the host\n")
            r = await call_tool(c, "write", {"file_path": "old.txt", "content": "x"}, session=s)
            assert r.is_error and "changed on the host" in r.output
            assert (ws / "old.txt").read_text() == "changed on the host\n"
            await call_tool(c, "read", {"file_path": "old.txt"}, session=s)
            r = await call_tool(c, "write", {"file_path": "old.txt", "content": "new\n"}, session=s)
            assert not r.is_error and (ws / "old.txt").read_text() == "new\n"
            assert "-changed on the host" in r.metadata["diff"]
            assert [cs.files[0].path for cs in s.changes] == ["new/dir/a.py", "old.txt"]

    run(main())


def test_edit_exact_unique_or_replace_all(bk: BridgeKey, ws: Path) -> None:
    (ws / "m.py").write_text("def f():\n    return 1\n\ndef g():\n    return 1\n")
    (ws / "crlf.txt").write_bytes(b"a\r\nb\r\n")

    async def main() -> None:
        async with connected(bk) as c:

            async def edit(**kw: Any) -> ToolResult:
                return await call_tool(c, "edit", {"file_path": "m.py", **kw})

            r = await edit(old_string="return 1", new_string="return 2")
            assert r.is_error and "occurs 2 times" in r.output
            r = await edit(old_string="def g():\n    return 1", new_string="def g():\n    return 2")
            assert not r.is_error and r.metadata["replacements"] == 1
            assert "+    return 2" in r.metadata["diff"]
            r = await edit(old_string="  return 1", new_string="  return 3", replace_all=True)
            assert not r.is_error
            assert (ws / "m.py").read_text() == "def f():\n    return 3\n\ndef g():\n    return 2\n"
            r = await edit(old_string="def f():\nreturn 3", new_string="x")
            assert r.is_error and "differs only in whitespace" in r.output and "line 1" in r.output
            r = await edit(old_string="nowhere", new_string="x")
            assert r.is_error and "not found" in r.output
            r = await edit(old_string="def f", new_string="def f")
            assert r.is_error and "identical" in r.output
            r = await edit(old_string="", new_string="x")
            assert r.is_error and "already exists" in r.output
            r = await call_tool(
                c, "edit", {"file_path": "fresh.txt", "old_string": "", "new_string": "hi\n"}
            )
            assert not r.is_error and (ws / "fresh.txt").read_text() == "hi\n"
            r = await call_tool(
                c, "edit", {"file_path": "crlf.txt", "old_string": "a\nb", "new_string": "a\nB"}
            )
            assert not r.is_error and (ws / "crlf.txt").read_bytes() == b"a\r\nB\r\n"

    run(main())


class RacingBridge:
    """Changes the file on the host right after the tool has read it."""

    def __init__(self, client: Any, path: Path) -> None:
        self.client = client
        self.path = path
        self.ops: list[str] = []

    async def call(self, op: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        self.ops.append(op)
        res = await self.client.call(op, args, **kw)
        if op == "fs.read":
            self.path.write_text("host edit\nold\n")
        return res


def test_edit_never_overwrites_a_file_changed_meanwhile(bk: BridgeKey, ws: Path) -> None:
    (ws / "r.txt").write_text("old\n")

    async def main() -> None:
        async with connected(bk) as c:
            racing = RacingBridge(c, ws / "r.txt")
            r = await call_tool(
                racing, "edit", {"file_path": "r.txt", "old_string": "old", "new_string": "new"}
            )
            assert racing.ops == ["fs.read", "fs.write"]
            assert r.is_error and "changed on the host" in r.output
            assert (ws / "r.txt").read_text() == "host edit\nold\n"

    run(main())


# -- apply_patch ------------------------------------------------------------------------------

PATCH = """*** Begin Patch
*** Add File: docs/new.md
+# New
*** Update File: src/app.py
*** Move to: src/main.py
@@ def main():
-    print("hi")
+    print("hello")
*** Update File: README.md
 Title
-old line
+new line
*** Delete File: obsolete.txt
*** End Patch"""


def test_apply_patch_applies_every_file_or_none(bk: BridgeKey, ws: Path) -> None:
    (ws / "src").mkdir()
    (ws / "src/app.py").write_text('def main():\n    print("hi")\n')
    (ws / "README.md").write_text("Title\nold line\n")
    (ws / "obsolete.txt").write_text("bye\n")

    async def main() -> None:
        async with connected(bk) as c:
            bad = PATCH.replace("-old line", "-not in the file")
            r = await call_tool(c, "apply_patch", {"patch_text": bad})
            assert r.is_error and "nothing was written" in r.output
            assert sorted(p.name for p in ws.rglob("*") if p.is_file()) == [
                "README.md",
                "app.py",
                "obsolete.txt",
            ]
            s = Session()
            r = await call_tool(c, "apply_patch", {"patchText": PATCH}, session=s)
            assert not r.is_error, r.output
            assert r.output.splitlines()[1:] == [
                "A docs/new.md",
                "M src/main.py (moved from src/app.py)",
                "M README.md",
                "D obsolete.txt",
            ]
            assert (ws / "docs/new.md").read_text() == "# New\n"
            assert (ws / "src/main.py").read_text() == 'def main():\n    print("hello")\n'
            assert not (ws / "src/app.py").exists() and not (ws / "obsolete.txt").exists()
            assert (ws / "README.md").read_text() == "Title\nnew line\n"
            # undo reverts the whole patch
            r = await call_tool(c, "undo", {}, session=s)
            assert not r.is_error, r.output
            assert (ws / "src/app.py").read_text() == 'def main():\n    print("hi")\n'
            assert (ws / "obsolete.txt").read_text() == "bye\n"
            assert not (ws / "src/main.py").exists() and not (ws / "docs/new.md").exists()
            r = await call_tool(c, "apply_patch", {"patch_text": "*** Begin Patch\n*** End Patch"})
            assert r.is_error and "invalid patch" in r.output

    run(main())


# -- glob / grep / list -----------------------------------------------------------------------


def _tree(ws: Path) -> None:
    (ws / ".gitignore").write_text("build/\n")
    for rel, text in {
        "README.md": "TODO: docs\n",
        "src/app.py": "def main():\n    pass  # TODO\n",
        "src/util/helpers.py": "x = 1\n",
        "build/out.py": "TODO generated\n",
        "notes.txt": "nothing\n",
    }.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    (ws / "empty_dir").mkdir()


def test_glob_grep_list(bk: BridgeKey, ws: Path) -> None:
    _tree(ws)

    async def main() -> None:
        async with connected(bk) as c:
            r = await call_tool(c, "glob", {"pattern": "*.py"})
            assert r.output.splitlines() == ["src/app.py", "src/util/helpers.py"]
            r = await call_tool(c, "glob", {"pattern": "*.py", "path": "src/util"})
            assert r.output.splitlines() == ["src/util/helpers.py"]
            assert (await call_tool(c, "glob", {"pattern": "*.rs"})).output == "No files found"
            r = await call_tool(c, "grep", {"pattern": "TODO"})
            assert r.output.startswith("Found 2 matches")
            assert "README.md:\n  Line 1: TODO: docs" in r.output
            assert "src/app.py:\n  Line 2:     pass  # TODO" in r.output
            assert "build" not in r.output  # gitignored
            r = await call_tool(c, "grep", {"pattern": "TODO", "include": "*.py"})
            assert "README" not in r.output and "src/app.py" in r.output
            r = await call_tool(c, "grep", {"pattern": "(unclosed"})
            assert r.is_error and "escape" in r.output
            r = await call_tool(c, "list", {})
            assert r.output.splitlines() == [
                "./",
                "  build/ (empty or ignored)",
                "  empty_dir/ (empty or ignored)",
                "  src/",
                "    util/",
                "      helpers.py",
                "    app.py",
                "  .gitignore",
                "  README.md",
                "  notes.txt",
            ]
            r = await call_tool(c, "list", {"path": "src", "ignore": ["util"]})
            assert r.output.splitlines() == ["src/", "  app.py"]
            r = await call_tool(c, "list", {"path": "README.md"})
            assert r.is_error and "use read" in r.output

    run(main())


# -- bash -------------------------------------------------------------------------------------


def test_bash_streams_output_and_reports_the_exit_code(bk: BridgeKey, ws: Path) -> None:
    async def main() -> None:
        async with connected(bk) as c:
            events: list[AgentEvent] = []
            r = await call_tool(
                c, "bash", {"command": "echo out; echo err >&2; exit 3"}, events=events
            )
            assert not r.is_error and r.metadata["exit_code"] == 3
            assert "out" in r.output and "err" in r.output and r.output.endswith("(exit code 3)")
            streamed = "".join(e.text for e in events if isinstance(e, ToolOutput))
            assert "out\n" in streamed and "err\n" in streamed
            r = await call_tool(c, "bash", {"command": "sleep 5", "timeout": 300})
            assert "timed out" in r.output and r.metadata["timed_out"]
            r = await call_tool(c, "bash", {"command": "true"})
            assert r.output == "(no output)\n\n(exit code 0)"
            # default permissions ask; nobody can answer: refused, and nothing ran
            gate = PermissionGate()
            r = await call_tool(c, "bash", {"command": "touch ran.txt"}, gate=gate)
            assert r.status == "refused" and "--yes" in r.output
            assert not (ws / "ran.txt").exists()
            assert [(x.tool, x.subject) for x in gate.refusals] == [("bash", "touch ran.txt")]

    run(main())


# -- session tools ----------------------------------------------------------------------------


def test_todos_and_questions(bk: BridgeKey, ws: Path) -> None:
    async def main() -> None:
        async with connected(bk) as c:
            s = Session()
            todos = [{"content": "write tests", "status": "in_progress"}]
            r = await call_tool(c, "todowrite", {"todos": todos}, session=s)
            assert s.todos == [
                {"id": "1", "content": "write tests", "status": "in_progress", "priority": "medium"}
            ]
            assert r.title == "1 todos"
            r = await call_tool(c, "todoread", {}, session=s)
            assert '"write tests"' in r.output
            q = {"questions": [{"question": "Which DB?", "options": [{"label": "sqlite"}]}]}
            r = await call_tool(c, "question", q)
            assert r.is_error and "non-interactive" in r.output

            async def ask_user(questions: list[dict[str, Any]]) -> list[str]:
                return ["sqlite"]

            r = await call_tool(c, "question", q, ask_user=ask_user)
            assert r.output == "The user answered:\n- Which DB?\n  → sqlite"

    run(main())


def test_diff_and_undo_cover_the_sessions_changes(bk: BridgeKey, ws: Path) -> None:
    (ws / "a.txt").write_text("one\n")

    async def main() -> None:
        async with connected(bk) as c:
            s = Session()
            assert "No changes" in (await call_tool(c, "diff", {}, session=s)).output
            await call_tool(
                c,
                "edit",
                {"file_path": "a.txt", "old_string": "one", "new_string": "two"},
                session=s,
                call_id="e1",
            )
            await call_tool(c, "write", {"file_path": "b.txt", "content": "bee\n"}, session=s)
            d = (await call_tool(c, "diff", {}, session=s)).output
            assert "-one\n+two" in d and "+++ b/b.txt" in d and "--- /dev/null" in d
            r = await call_tool(c, "undo", {}, session=s)
            assert "b.txt" in r.output and not (ws / "b.txt").exists()
            (ws / "a.txt").write_text("two\nand a host edit\n")
            r = await call_tool(c, "undo", {}, session=s)
            assert r.is_error and "changed again" in r.output
            assert (ws / "a.txt").read_text() == "two\nand a host edit\n"
            (ws / "a.txt").write_text("two\n")
            r = await call_tool(c, "undo", {}, session=s)
            assert not r.is_error and (ws / "a.txt").read_text() == "one\n"
            assert "Nothing to undo" in (await call_tool(c, "undo", {}, session=s)).output

    run(main())


# -- registry ---------------------------------------------------------------------------------


def test_tool_set_names_and_schemas() -> None:
    names = [s.name for s in REGISTRY.specs()]
    assert names == [
        "read", "write", "edit", "apply_patch", "glob", "grep", "list",
        "bash", "todowrite", "todoread", "question",
    ]  # fmt: skip
    for spec in REGISTRY.specs():
        params = spec.parameters
        assert params["type"] == "object" and spec.description
        for name, prop in params["properties"].items():
            if name in ("file_path", "path"):
                assert "path" in name
            assert "description" in prop or prop.get("type") == "array", (spec.name, name)
        for req in params.get("required", []):
            assert req in params["properties"]
    assert "command" in REGISTRY.get("bash").spec.parameters["required"]  # type: ignore[union-attr]
    assert {"diff", "undo"} <= set(REGISTRY.tools) - set(names)


def test_prepare_resolves_aliases_and_validates() -> None:
    args, err = REGISTRY.prepare("edit", {"filePath": "a", "oldString": "x", "newString": "y"})
    assert err is None and args == {"file_path": "a", "old_string": "x", "new_string": "y"}
    args, err = REGISTRY.prepare("read", {"path": "a", "offset": 2.0, "bogus": 1})
    assert err is None and args == {"file_path": "a", "offset": 2}
    assert "missing required argument file_path" in (REGISTRY.prepare("read", {})[1] or "")
    assert "must be of type integer" in (
        REGISTRY.prepare("read", {"file_path": "a", "limit": "ten"})[1] or ""
    )
    assert "must be one of" in (
        REGISTRY.prepare("todowrite", {"todos": [{"content": "x", "status": "done"}]})[1] or ""
    )
    assert "unknown tool 'nope'" in (REGISTRY.prepare("nope", {})[1] or "")
    assert "JSON object" in (REGISTRY.prepare("read", ["a"])[1] or "")


# -- truncation -------------------------------------------------------------------------------


def test_truncate_keeps_head_tail_or_both() -> None:
    text = "\n".join(f"l{i}" for i in range(100))
    assert truncate(text).truncated is False
    head = truncate(text, max_lines=10)
    assert head.text.split("\n")[:10] == [f"l{i}" for i in range(10)]
    assert head.text.endswith("[… 90 lines omitted …]") and head.omitted_lines == 90
    tail = truncate(text, max_lines=10, keep="tail")
    assert tail.text.split("\n")[0] == "[… 90 lines omitted …]" and tail.text.endswith("l99")
    both = truncate(text, max_lines=10, keep="both")
    lines = both.text.split("\n")
    assert lines[0] == "l0" and lines[-1] == "l99" and "omitted" in both.text
    assert len(lines) == 11
    by_bytes = truncate("x" * 100 + "\n" + "y" * 100, max_bytes=150)
    assert by_bytes.truncated and by_bytes.text.startswith("x" * 100) and "y" not in by_bytes.text
    wide = truncate("z" * 60_000)
    assert wide.truncated and "more characters" in wide.text and "omitted" not in wide.text
    assert cut_line("ab", 1) == "a… [1 more characters]"
