"""Agent-side overhead per tool step, on CPython and in Pyodide under Node, in one run; and the
memory of a 1,000-message session in Pyodide.

    python -m bench.agent_step [--quick]       prints the rows (the lead's `python -m bench`
                                               calls `run()`)

*Overhead per tool step* is everything a step costs except the model's time and the bridge's
round trip: the loop state machine, schema checks, permission decisions, the tool's own work on
the device (hashing, diffing, truncating, formatting), events, session bookkeeping. It is
measured with a model that answers at once (a provider that yields a ready tool call) and a
bridge that answers at once (an in-memory `InstantBridge`), so what remains is the agent's own
time. Tools: `read` (200 lines), `edit` (a diff of 200 lines), `bash` (streamed output), in turn.

The same code runs inside Pyodide (`node tests/pyodide/run.mjs --python bench/agent_step.py
--inner`), which prints its figures as JSON; this process runs CPython's and compares. Targets:
≤ 2 ms on CPython, ≤ 10 ms in Pyodide; each row's baseline is its budget, so `ratio ≤ 1` means
met, and the Pyodide/CPython ratio is printed beside them from the same run.

Memory: a session of 1,000 messages (user requests, assistant turns with tool calls, tool results
of ~2 KB), measured with `tracemalloc` (Python heap held by the session) and as its saved JSON
size, in Pyodide with CPython's figure as the baseline.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent_core.agent.loop import Agent, LoopConfig  # noqa: E402
from agent_core.agent.permissions import PermissionGate  # noqa: E402
from agent_core.agent.session import Session  # noqa: E402
from agent_core.llm.types import (  # noqa: E402
    Message,
    ModelRequest,
    TextDelta,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    TurnEnd,
    Usage,
)

CPYTHON_BUDGET_MS = 2.0
PYODIDE_BUDGET_MS = 10.0
FILE = "".join(f"line {i:03d}: x = {i} * 2  # some code here\n" for i in range(200))
TOOLS: list[tuple[str, dict[str, Any]]] = [
    ("read", {"file_path": "a.py"}),
    ("edit", {"file_path": "a.py", "old_string": "line 100", "new_string": "LINE 100"}),
    ("bash", {"command": "make test"}),
]


class InstantBridge:
    """Answers at once, from memory: what is left of a step's time is the agent's."""

    def __init__(self) -> None:
        self.text = FILE
        self.sha = "0" * 64

    async def call(self, op: str, args: Any = None, **kw: Any) -> dict[str, Any]:
        if op == "fs.read":
            return {
                "content": self.text,
                "sha256": self.sha,
                "size": len(self.text),
                "total_lines": 200,
                "truncated": False,
                "encoding": "utf-8",
            }
        if op == "fs.write":
            self.text = FILE  # the next edit finds its old_string again
            return {"sha256": self.sha, "size": len(args["content"]), "created": False}
        if op == "exec.run":
            on_event = kw.get("on_event")
            for i in range(5):
                if on_event is not None:
                    r = on_event("stdout", f"test {i} ok\n")
                    if asyncio.iscoroutine(r):
                        await r
            return {"exit_code": 0, "timed_out": False, "duration_ms": 1}
        raise ValueError(op)


class InstantModel:
    """A provider whose every turn is the same tool call, ready at once; then a text answer."""

    name = "instant"

    def __init__(self, tool: str, args: dict[str, Any], steps: int) -> None:
        self.tool, self.args, self.left = tool, args, steps

    async def stream(self, request: ModelRequest) -> Any:
        if self.left <= 0:
            yield TextDelta("done")
            yield TurnEnd(Message("assistant", [TextPart("done")]), "end_turn", Usage(10, 2))
            return
        self.left -= 1
        call = ToolCallPart(f"c{self.left}", self.tool, dict(self.args))
        yield TurnEnd(Message("assistant", [call]), "tool_use", Usage(10, 2))


async def _steps(tool: str, args: dict[str, Any], steps: int) -> float:
    """Seconds per step over `steps` tool steps of one kind."""
    agent = Agent(
        InstantModel(tool, args, steps),
        InstantBridge(),
        gate=PermissionGate(yes=True),
        config=LoopConfig(max_steps=steps + 2, doom_loop_threshold=0),
        on_event=lambda ev: None,
    )
    t0 = time.perf_counter()
    result = await agent.run("go")
    elapsed = time.perf_counter() - t0
    if result.reason != "end_turn":
        raise RuntimeError(f"the benchmark run ended with {result.reason}: {result.error}")
    return elapsed / steps


async def overhead(steps: int) -> dict[str, float]:
    """ms per step, per tool and overall (the mean of the three)."""
    await _steps("read", TOOLS[0][1], 5)  # warm up imports and caches
    out = {}
    for tool, args in TOOLS:
        out[tool] = await _steps(tool, args, steps) * 1000
    out["all"] = sum(out[t] for t, _ in TOOLS) / len(TOOLS)
    return out


def session_of(n: int) -> Session:
    """A realistic session of `n` messages: a request, then tool turns and their results."""
    s = Session(title="a long session")
    for i in range(n):
        kind = i % 4
        if kind == 0:
            s.messages.append(Message("user", [TextPart(f"request {i}: " + "please do x. " * 20)]))
        elif kind == 1:
            call = ToolCallPart(f"call_{i}", "read", {"file_path": f"src/mod_{i}.py"})
            s.messages.append(Message("assistant", [TextPart("Looking at it."), call]))
        elif kind == 2:
            s.messages.append(Message("tool", [ToolResultPart(f"call_{i - 1}", FILE[:2000])]))
        else:
            s.messages.append(Message("assistant", [TextPart("Done with step. " * 15)]))
    return s


def memory(n: int) -> dict[str, float]:
    """MiB held by an n-message session (Python heap) and the size of its saved JSON."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    s = session_of(n)
    after = tracemalloc.take_snapshot()
    held = sum(st.size_diff for st in after.compare_to(before, "filename"))
    tracemalloc.stop()
    saved = len(json.dumps(s.to_json()).encode())
    return {"heap_mib": held / 2**20, "json_mib": saved / 2**20, "messages": len(s.messages)}


def measure(quick: bool) -> dict[str, Any]:
    steps = 60 if quick else 300
    coro = overhead(steps)
    if sys.platform == "emscripten":
        from pyodide.ffi import run_sync

        per_step = run_sync(coro)
    else:
        per_step = asyncio.run(coro)
    return {"overhead_ms": per_step, "memory": memory(1000), "steps": steps}


def _inside_pyodide(quick: bool) -> dict[str, Any] | None:
    """Run this file inside Pyodide under Node; None when Node or Pyodide is not set up."""
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "pyodide" / "pyodide.asm.wasm").is_file():
        print("agent_step: no node/Pyodide here: the Pyodide figures are skipped", file=sys.stderr)
        return None
    args = [node, str(REPO / "tests" / "pyodide" / "run.mjs"), "--python", __file__, "--inner"]
    if quick:
        args.append("--quick")
    proc = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if "wheels missing" in proc.stderr:
        print("agent_step: Pyodide test wheels missing (python tests/pyodide/fetch_wheels.py): "
              "the Pyodide figures are skipped", file=sys.stderr)  # fmt: skip
        return None
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the Pyodide run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _row(
    name: str,
    value: float | None,
    unit: str,
    baseline: float | None,
    baseline_name: str,
    target: float | None,
    note: str = "",
) -> dict[str, Any]:
    ratio = None if value is None or not baseline else round(value / baseline, 3)
    return {
        "name": name,
        "value": None if value is None else round(value, 4),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 4),
        "baseline_name": baseline_name,
        "ratio": ratio,
        "target": target,
        "better": "lower",
        "note": note,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure on CPython here and in Pyodide under Node; one row per figure."""
    cp = measure(quick)
    py = _inside_pyodide(quick)
    rows = []
    tools = ", ".join(f"{t} {cp['overhead_ms'][t]:.3f}" for t, _ in TOOLS)
    rows.append(
        _row(
            "agent overhead per tool step, CPython",
            cp["overhead_ms"]["all"],
            "ms",
            CPYTHON_BUDGET_MS,
            "2 ms budget",
            1.0,
            f"ms per tool: {tools}",
        )
    )
    if py is not None:
        tools = ", ".join(f"{t} {py['overhead_ms'][t]:.3f}" for t, _ in TOOLS)
        rows.append(
            _row(
                "agent overhead per tool step, Pyodide (Node)",
                py["overhead_ms"]["all"],
                "ms",
                PYODIDE_BUDGET_MS,
                "10 ms budget",
                1.0,
                f"ms per tool: {tools}",
            )
        )
        rows.append(
            _row(
                "agent overhead per tool step, Pyodide vs CPython",
                py["overhead_ms"]["all"],
                "ms",
                cp["overhead_ms"]["all"],
                "CPython, same run",
                None,
            )
        )
        rows.append(
            _row(
                "1,000-message session, Python heap, Pyodide",
                py["memory"]["heap_mib"],
                "MiB",
                cp["memory"]["heap_mib"],
                "CPython, same run",
                None,
                f"saved JSON {py['memory']['json_mib']:.2f} MiB",
            )
        )
    else:
        rows.append(
            _row(
                "1,000-message session, Python heap, CPython",
                cp["memory"]["heap_mib"],
                "MiB",
                None,
                "",
                None,
                f"saved JSON {cp['memory']['json_mib']:.2f} MiB; Pyodide not available",
            )
        )
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    if "--inner" in sys.argv:  # inside Pyodide: print the raw figures for the parent
        print(json.dumps(measure(quick)))
        return
    for row in run(quick):
        ratio = "" if row["ratio"] is None else f"  ratio {row['ratio']:.2f}"
        base = "" if row["baseline"] is None else f"  vs {row['baseline']} ({row['baseline_name']})"
        print(f"{row['name']}: {row['value']} {row['unit']}{base}{ratio}  {row['note']}")


if __name__ == "__main__":
    main()
