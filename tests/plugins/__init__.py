"""Plugins the tests build from source: the examples in plugins/examples/ and the test plugins
here (attacks/: sandbox attacks and ABI probes; echo/: the benchmark plugin).

`built(name)` compiles one with the SDK into build/plugins/<name>/ (gitignored) and returns that
directory; builds are cached by a key over sources, flags and compiler, so only the first run of
a checkout compiles anything.
"""

from __future__ import annotations

from pathlib import Path

from agent_core.plugins import sdk

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "plugins" / "examples"
TEST_PLUGINS = Path(__file__).resolve().parent
BUILD = REPO / "build" / "plugins"


def source_dir(name: str) -> Path:
    for base in (EXAMPLES, TEST_PLUGINS):
        if (base / name / "kite-plugin.json").is_file():
            return base / name
    raise KeyError(f"no plugin source named {name!r}")


def built(name: str) -> Path:
    """Build plugin `name` (cached) and return the directory with its manifest and module."""
    return sdk.build(source_dir(name), BUILD / name).manifest.parent


EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "kite-plugin.json").is_file())
