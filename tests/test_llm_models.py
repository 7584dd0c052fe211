"""The model table: context windows and prices by name prefix, config overrides, and the
per-session cost that never guesses an unknown price."""

from __future__ import annotations

import pytest

from agent_core.agent.session import Session
from agent_core.llm import models
from agent_core.llm.types import Usage


def test_longest_prefix_wins_and_provider_prefix_is_ignored() -> None:
    assert models.lookup("openai/gpt-4o-mini-2024-07-18") == models.MODELS["gpt-4o-mini"]
    assert models.lookup("gpt-4o-2024-08-06") == models.MODELS["gpt-4o"]
    assert models.context_limit("anthropic/claude-sonnet-4-5") == 200_000
    assert models.lookup("llama3:8b") is None
    assert models.context_limit("llama3:8b") == models.DEFAULT_CONTEXT


def test_cost_uses_cache_prices() -> None:
    u = Usage(input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=2_000_000)
    # claude-sonnet-4: $3 in, $15 out, $0.30 cache read per million
    assert models.cost("claude-sonnet-4-5", u) == pytest.approx(3.0 + 1.5 + 0.6)
    assert models.cost("my-model", u) is None


def test_config_overrides_extend_and_validate() -> None:
    table = models.overrides_from_config(
        {"my-model": {"context": 8192, "input": 1, "output": 2}, "gpt-4o": {"context": 64000}}
    )
    assert models.context_limit("my-model-q4", table) == 8192
    assert models.cost("my-model", Usage(1_000_000, 1_000_000), table) == pytest.approx(3.0)
    # Overriding the context keeps the built-in price.
    assert models.lookup("gpt-4o", table) == models.ModelInfo(64000, models.MODELS["gpt-4o"].price)
    for bad, msg in [
        ([], "expected a table"),
        ({"m": 3}, "models.m: expected a table"),
        ({"m": {"ctx": 1}}, "unknown key(s) ctx"),
        ({"m": {"context": "big"}}, "must be numbers"),
        ({"m": {"context": 0}}, "must be positive"),
    ]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            models.overrides_from_config(bad)


def test_session_cost_becomes_unknown_and_round_trips() -> None:
    s = Session()
    s.add_usage(Usage(10, 5), 0.25)
    s.add_usage(Usage(0, 0), None)  # no tokens: nothing to price
    assert s.cost_usd == pytest.approx(0.25)
    s.add_usage(Usage(1, 1), None)
    assert s.cost_usd is None
    s.add_usage(Usage(1, 1), 1.0)
    assert s.cost_usd is None and s.usage.input_tokens == 12
    again = Session.from_json(s.to_json())
    assert again.cost_usd is None and again.usage == s.usage
