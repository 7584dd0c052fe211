"""What the agent needs to know about a model besides its wire format: its context window (for
automatic compaction) and its price (for per-session cost accounting).

A small table of well-known models, matched by name prefix (longest wins); the user's config can
override or extend it (`models` in the kite config, or `LoopConfig.context_limit` / `prices=`),
since prices change and local servers serve anything. Prices are US dollars per million tokens:
input, output, cache read, cache write. Unknown models have no price (cost shown as unknown,
never guessed) and a conservative context window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent_core.llm.types import Usage

DEFAULT_CONTEXT = 32_000
"""Context window assumed for a model not in the table (local servers often run 32k or less)."""


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_read: float | None = None  # default: the input price
    cache_write: float | None = None  # default: the input price

    def cost(self, usage: Usage) -> float:
        cr = self.input if self.cache_read is None else self.cache_read
        cw = self.input if self.cache_write is None else self.cache_write
        total = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * cr
            + usage.cache_write_tokens * cw
        )
        return total / 1_000_000


@dataclass(frozen=True)
class ModelInfo:
    context: int
    price: Price | None = None


# name prefix (without the provider) -> info. Public list prices at the time of writing.
MODELS: dict[str, ModelInfo] = {
    "claude-opus-4": ModelInfo(200_000, Price(15.0, 75.0, 1.5, 18.75)),
    "claude-sonnet-4": ModelInfo(200_000, Price(3.0, 15.0, 0.3, 3.75)),
    "claude-3-7-sonnet": ModelInfo(200_000, Price(3.0, 15.0, 0.3, 3.75)),
    "claude-3-5-haiku": ModelInfo(200_000, Price(0.8, 4.0, 0.08, 1.0)),
    "claude-haiku-4": ModelInfo(200_000, Price(1.0, 5.0, 0.1, 1.25)),
    "gpt-4o-mini": ModelInfo(128_000, Price(0.15, 0.6, 0.075)),
    "gpt-4o": ModelInfo(128_000, Price(2.5, 10.0, 1.25)),
    "gpt-4.1-mini": ModelInfo(1_047_576, Price(0.4, 1.6, 0.1)),
    "gpt-4.1-nano": ModelInfo(1_047_576, Price(0.1, 0.4, 0.025)),
    "gpt-4.1": ModelInfo(1_047_576, Price(2.0, 8.0, 0.5)),
    "gpt-5-mini": ModelInfo(400_000, Price(0.25, 2.0, 0.025)),
    "gpt-5-nano": ModelInfo(400_000, Price(0.05, 0.4, 0.005)),
    "gpt-5": ModelInfo(400_000, Price(1.25, 10.0, 0.125)),
    "o3": ModelInfo(200_000, Price(2.0, 8.0, 0.5)),
    "o4-mini": ModelInfo(200_000, Price(1.1, 4.4, 0.275)),
}


def _bare(model: str) -> str:
    name = model.rsplit("/", 1)[-1] if model.startswith(("openai/", "anthropic/")) else model
    return name.lower()


def lookup(model: str, overrides: Mapping[str, ModelInfo] | None = None) -> ModelInfo | None:
    """The info for `model` (`openai/gpt-4o`, `gpt-4o-2024-08-06`, ...): the longest matching
    prefix, overrides first; None when unknown."""
    name = _bare(model)
    for table in (overrides or {}, MODELS):
        best = max((k for k in table if name.startswith(k.lower())), key=len, default=None)
        if best is not None:
            return table[best]
    return None


def context_limit(model: str, overrides: Mapping[str, ModelInfo] | None = None) -> int:
    info = lookup(model, overrides)
    return info.context if info else DEFAULT_CONTEXT


def cost(
    model: str, usage: Usage, overrides: Mapping[str, ModelInfo] | None = None
) -> float | None:
    """US dollars for `usage` on `model`, or None when its price is unknown."""
    info = lookup(model, overrides)
    if info is None or info.price is None:
        return None
    return info.price.cost(usage)


def overrides_from_config(table: object) -> dict[str, ModelInfo]:
    """`{"name-prefix": {"context": N, "input": $, "output": $, "cache_read": $,
    "cache_write": $}}` from the config; raises ValueError with the key at fault."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ValueError("models: expected a table of model name prefixes")
    out: dict[str, ModelInfo] = {}
    for name, raw in table.items():
        if not isinstance(raw, Mapping):
            raise ValueError(f"models.{name}: expected a table")
        unknown = set(raw) - {"context", "input", "output", "cache_read", "cache_write"}
        if unknown:
            raise ValueError(f"models.{name}: unknown key(s) {', '.join(sorted(unknown))}")
        base = lookup(str(name))
        try:
            context = int(raw.get("context", base.context if base else DEFAULT_CONTEXT))
            price = base.price if base else None
            if "input" in raw or "output" in raw:
                price = Price(
                    float(raw.get("input", price.input if price else 0.0)),
                    float(raw.get("output", price.output if price else 0.0)),
                    float(raw["cache_read"]) if "cache_read" in raw else None,
                    float(raw["cache_write"]) if "cache_write" in raw else None,
                )
        except (TypeError, ValueError):
            raise ValueError(f"models.{name}: context and prices must be numbers") from None
        if context <= 0:
            raise ValueError(f"models.{name}: context must be positive")
        out[str(name)] = ModelInfo(context, price)
    return out
