"""Device-side permissions: wildcards, last match wins, bash command splitting, the gate."""

from __future__ import annotations

import asyncio

import pytest

from agent_core.agent.permissions import (
    ConfigError,
    PermissionDenied,
    PermissionGate,
    PermissionRefused,
    PermissionRejected,
    PermissionReply,
    PermissionRequest,
    Rule,
    Ruleset,
    always_pattern,
    bash_subjects,
    rules_from_config,
    wildcard_match,
)


@pytest.mark.parametrize(
    ("pattern", "text", "ok"),
    [
        ("*", "anything at/all", True),
        ("git status*", "git status --short", True),
        ("git status*", "git stash", False),
        ("ls *", "ls", True),  # a trailing " *" also matches the bare command
        ("ls *", "ls -la", True),
        ("ls *", "lsof", False),
        ("src/*.py", "src/a/b.py", True),  # * crosses '/' like opencode's wildcards
        ("*.env", "config/.env", True),
        ("file?.txt", "file1.txt", True),
        ("file?.txt", "file12.txt", False),
        ("a+b(c)", "a+b(c)", True),  # regex characters are literal
    ],
)
def test_wildcards(pattern: str, text: str, ok: bool) -> None:
    assert wildcard_match(pattern, text) is ok


def test_defaults_like_opencode() -> None:
    rs = Ruleset()
    for tool in ("read", "glob", "grep", "list", "todoread", "todowrite", "question"):
        assert rs.evaluate(tool, "x") == "allow", tool
    for tool in ("edit", "write", "apply_patch"):
        assert rs.evaluate(tool, "src/a.py") == "allow", tool
    assert rs.evaluate("bash", "ls") == "ask"
    assert rs.evaluate("doom_loop", "read") == "ask"
    assert rs.evaluate("read", ".env") == "ask"
    assert rs.evaluate("read", "app/.env.local") == "ask"
    assert rs.evaluate("read", ".env.example") == "allow"


def test_last_matching_rule_wins_and_config_order_is_kept() -> None:
    rs = Ruleset(
        [
            Rule("*", "*", "allow"),
            *rules_from_config(
                {"bash": {"*": "ask", "git *": "allow", "git push*": "deny"}, "write": "deny"}
            ),
        ]
    )
    assert rs.evaluate("bash", "git status") == "allow"
    assert rs.evaluate("bash", "git push origin") == "deny"
    assert rs.evaluate("bash", "make") == "ask"
    # "write" folds into "edit", for every editing tool
    assert rs.evaluate("edit", "a.py") == "deny"
    assert rs.evaluate("apply_patch", "a.py") == "deny"
    # a later general rule overrides an earlier specific one
    rs.add(Rule("bash", "*", "allow"))
    assert rs.evaluate("bash", "git push") == "allow"
    assert Ruleset([]).evaluate("read", "x") == "ask"  # nothing matches: ask


@pytest.mark.parametrize("bad", [{"bash": "maybe"}, {"bash": 3}, {"bash": {"*": "yes"}}, []])
def test_bad_config_is_an_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        rules_from_config(bad)  # type: ignore[arg-type]


def test_bash_subjects_split_compound_commands() -> None:
    assert bash_subjects("ls -la && rm -rf build; echo 'a && b' | wc -l") == [
        "ls -la",
        "rm -rf build",
        "echo 'a && b'",
        "wc -l",
    ]
    assert "rm -rf /" in bash_subjects("echo $(rm -rf /)")
    assert "curl x" in bash_subjects("echo `curl x`")
    assert bash_subjects("  pytest   -q  ") == ["pytest -q"]
    rs = Ruleset([*Ruleset().rules, *rules_from_config({"bash": {"ls *": "allow"}})])
    assert rs.evaluate_all("bash", bash_subjects("ls")) == "allow"
    assert rs.evaluate_all("bash", bash_subjects("ls && rm -rf x")) == "ask"


def test_always_patterns() -> None:
    assert always_pattern("bash", "git status --short") == "git status *"
    assert always_pattern("bash", "pytest -q tests/") == "pytest *"
    assert always_pattern("bash", "git -C x log") == "git *"
    assert always_pattern("edit", "src/a.py") == "*"


def _req(permission: str = "bash", subject: str = "make test") -> PermissionRequest:
    return PermissionRequest(permission, [subject], permission, "call_1", f"Run `{subject}`")


def test_gate_without_user_refuses_and_records() -> None:
    gate = PermissionGate()
    with pytest.raises(PermissionRefused, match="--yes"):
        asyncio.run(gate.check(_req()))
    assert [(r.tool, r.subject) for r in gate.refusals] == [("bash", "make test")]
    asyncio.run(gate.check(_req("read", "README.md")))  # allowed: no refusal recorded
    assert len(gate.refusals) == 1


def test_gate_yes_allows_asks_but_not_denies() -> None:
    rs = Ruleset([*Ruleset().rules, Rule("bash", "rm *", "deny")])
    gate = PermissionGate(rs, yes=True)
    asyncio.run(gate.check(_req()))
    with pytest.raises(PermissionDenied):
        asyncio.run(gate.check(_req(subject="rm -rf /")))
    assert gate.refusals == []


def test_gate_answers_once_always_reject() -> None:
    answers = ["once", "always", "reject"]
    asked: list[PermissionRequest] = []

    async def approve(req: PermissionRequest) -> PermissionReply:
        asked.append(req)
        kind = answers.pop(0)
        return PermissionReply(kind, "use make check" if kind == "reject" else None)  # type: ignore[arg-type]

    async def main() -> None:
        gate = PermissionGate(approve=approve)
        await gate.check(_req(subject="pytest -q"))  # once
        await gate.check(_req(subject="pytest -q"))  # always -> "pytest *" from now on
        await gate.check(_req(subject="pytest tests/x.py"))  # no prompt
        assert len(asked) == 2
        with pytest.raises(PermissionRejected) as exc:
            await gate.check(_req(subject="make"))
        assert exc.value.feedback == "use make check"
        assert "use make check" in str(exc.value)

    asyncio.run(main())


def test_gate_prompts_one_at_a_time() -> None:
    active = 0
    peak = 0

    async def approve(req: PermissionRequest) -> PermissionReply:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return PermissionReply("once")

    async def main() -> None:
        gate = PermissionGate(approve=approve)
        await asyncio.gather(*(gate.check(_req(subject=f"cmd{i}")) for i in range(4)))

    asyncio.run(main())
    assert peak == 1
