"""Compaction, end to end: the scripted model server (real OpenAI and Anthropic SSE over
loopback) drives an agent whose tools run on a real bridge; near the context limit the agent
asks the model for a summary (old tool output pruned from that request), then carries only the
summary, while the whole history stays in the session and in the bridge's session store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.agent.compaction import PRUNED_NOTE, SUMMARY_INSTRUCTION, is_summary, window
from agent_core.agent.events import Compacted
from agent_core.agent.local import LocalProvider
from agent_core.agent.loop import Agent, LoopConfig
from agent_core.agent.permissions import PermissionGate
from agent_core.agent.session import Session
from agent_core.agent.sync import SessionSync
from agent_core.llm.providers import make_provider
from agent_core.llm.types import Message, TextPart
from tests.model_server import RecordedRequest, ScriptedModelServer, ToolCall, Turn
from tests.test_tools import BridgeKey, bridge_with_key, connected

PREFIX = "[Kite: summary of the earlier conversation"


@pytest.fixture(scope="module")
def bk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeKey]:
    with bridge_with_key(tmp_path_factory.mktemp("compact")) as b:
        yield b


@pytest.fixture
def ws(bk: BridgeKey) -> Path:
    bk.reset_workspace()
    for name in "abc":
        lines = [f"{name} line {i:03d} " + "x" * 40 for i in range(60)]  # ~3,300 characters
        (bk.workspace / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return bk.workspace


def conversation(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages without OpenAI's system message."""
    return [m for m in body["messages"] if m.get("role") != "system"]


def has_tools(body: dict[str, Any]) -> bool:
    return bool(body.get("tools"))


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_automatic_compaction_near_the_limit(bk: BridgeKey, ws: Path, fmt: str) -> None:
    seen: dict[str, RecordedRequest] = {}

    def summary(req: RecordedRequest) -> Turn:
        seen["summary"] = req
        return Turn(text="SUMMARY: the user asked to read a, b and c; all three were read.")

    def after(req: RecordedRequest) -> Turn:
        seen["after"] = req
        return Turn(text="All done.", usage=(300, 5))

    script = [
        Turn(tool_calls=[ToolCall("read", {"file_path": "a.txt"})], usage=(100, 5)),
        Turn(tool_calls=[ToolCall("read", {"file_path": "b.txt"})], usage=(950, 5)),
        Turn(tool_calls=[ToolCall("read", {"file_path": "c.txt"})], usage=(1800, 5)),
        summary,
        after,
    ]
    events: list[Any] = []

    async def go() -> None:
        async with ScriptedModelServer(script) as srv, connected(bk) as c:
            provider = make_provider(
                f"{fmt}/model-x", route="direct", base_url=srv.base_url, api_key="k"
            )
            session = Session()
            sync = SessionSync(c, session)
            agent = Agent(
                provider,
                c,
                session=session,
                gate=PermissionGate(yes=True),
                config=LoopConfig(model="model-x", context_limit=3000, compact_threshold=0.8),
                on_event=sync.wrap(events.append),
            )
            result = await agent.run("read a, b and c")
            assert result.ok and result.text == "All done.", result
            assert await sync.push()
            stored = await c.call("session.get", {"id": session.id, "limit": 100})
            # The whole history: 3 tool steps, the summary, the answer; a.txt's output intact.
            roles = [m.role for m in session.messages]
            assert roles == ["user"] + ["assistant", "tool"] * 3 + ["user", "assistant"]
            assert is_summary(session.messages[7])
            assert [m["message"] for m in stored["messages"]] == [
                m.to_json() for m in session.messages
            ]
            a_output = session.messages[2].parts[0].content
            assert "a line 059" in a_output and PRUNED_NOTE not in a_output
            assert window(session.messages) == session.messages[7:]

    asyncio.run(go())

    # Compaction came after the third step (1,805 reported + ~830 estimated > 0.8 × 3,000).
    [compacted] = [e for e in events if isinstance(e, Compacted)]
    assert compacted.auto and compacted.error is None and compacted.messages == 7
    assert 2400 < compacted.tokens_before < 3000
    # The summary request: no tools, the instruction last, a.txt's old output pruned, the two
    # most recent tool outputs whole.
    body = seen["summary"].body
    text = json.dumps(body)
    assert not has_tools(body)
    assert SUMMARY_INSTRUCTION in json.dumps(conversation(body)[-1])
    assert "a line 020" not in text and "a line 000" in text and "[... older tool output" in text
    assert "b line 059" in text and "c line 059" in text
    # The turn after it carries the summary only (and the tools again).
    after_body = seen["after"].body
    msgs = conversation(after_body)
    assert (
        len(msgs) == 1
        and PREFIX in json.dumps(msgs[0])
        and "SUMMARY: the user" in (json.dumps(msgs[0]))
    )
    assert "continue from this summary" in json.dumps(msgs[0])
    assert has_tools(after_body) and "a line 000" not in json.dumps(after_body)


def test_compact_on_demand_then_continue(bk: BridgeKey, ws: Path) -> None:
    seen: list[RecordedRequest] = []

    def record(turn: Turn) -> Any:
        def answer(req: RecordedRequest) -> Turn:
            seen.append(req)
            return turn

        return answer

    script = [
        record(Turn(text="First answer.")),
        record(Turn(text="SUMMARY: greeted.")),
        record(Turn(text="Second answer.")),
    ]

    async def go() -> None:
        async with ScriptedModelServer(script) as srv, connected(bk) as c:
            provider = make_provider(
                "anthropic/model-x", route="direct", base_url=srv.base_url, api_key="k"
            )
            agent = Agent(provider, c, config=LoopConfig(model="model-x"))
            assert (await agent.run("/compact")).text == "Nothing to compact yet."
            await agent.run("hello there")
            res = await agent.run("/compact")
            assert res.ok and "2 earlier messages" in res.text, res
            assert (await agent.run("and now?")).text == "Second answer."
            assert [m.role for m in agent.session.messages] == [
                "user",
                "assistant",
                "user",
                "user",
                "assistant",
            ]

    asyncio.run(go())
    assert len(seen) == 3
    assert not has_tools(seen[1].body)
    assert "hello there" in json.dumps(seen[1].body)
    last = conversation(seen[2].body)
    # The summary and the new message (Anthropic merges consecutive user turns into one).
    text = json.dumps(last)
    assert PREFIX in text and "and now?" in text and "hello there" not in text
    assert "First answer." not in text


def test_compact_without_a_model_is_refused_clearly(bk: BridgeKey, ws: Path) -> None:
    async def go() -> None:
        async with connected(bk) as c:
            session = Session(
                messages=[Message("user", [TextPart("/ls")]), Message("assistant", [])]
            )
            agent = Agent(LocalProvider(), c, session=session)
            res = await agent.run("/compact")
            assert res.reason == "error" and "cannot compact" in (res.error or ""), res
            assert len(session.messages) == 2  # nothing changed

    asyncio.run(go())
