"""Fixtures the browser tests share: the built web app and the scripted model server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO
from tests.model_server import ScriptedModelServer


@pytest.fixture(scope="module")
def web_dir() -> Path:
    """dist/web, (re)built incrementally by build.py at the top of the repository."""
    sys.path.insert(0, str(REPO))
    import build

    out = REPO / "dist" / "web"
    build.build(out, quiet=True)
    return out


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer().in_thread() as srv:
        yield srv
