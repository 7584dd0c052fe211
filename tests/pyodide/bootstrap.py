"""The Python half of the in-Pyodide test run: executed inside Pyodide by ``run.mjs``.

By the time these functions run, ``run.mjs`` has unpacked the wheels (pytest, hypothesis, ...)
into site-packages and mounted the repository at its host path with NODEFS, so agent_core and the
tests are imported straight from the working tree: always current, no wheel to rebuild.

``run.mjs`` calls them with ``callPromising``, which lets Python code below suspend on a
JavaScript promise (JSPI, ``pyodide.ffi.run_sync``). That is how the synchronous tests drive the
async Noise code here: ``tests.runtime_support.run`` uses ``run_sync`` where CPython uses
``asyncio.run``, which cannot work on Pyodide's browser event loop.
"""

from __future__ import annotations

import os
import runpy
import site
import sys

_WHEEL_MTIME = 1_000_000_000
"""Unpacking stamps every file with the current time, which would invalidate all cached bytecode
(keyed by source mtime and size) on every run; run.mjs keys the cache dir by the pinned wheel set
instead, so a fixed mtime is safe and saves ~2 s of compiling pytest and hypothesis per run."""


def _setup(repo: str, pycache: str | None) -> None:
    os.chdir(repo)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    if pycache:
        # Bytecode for Python 3.14 goes to a host cache dir, never into the tree, and makes
        # the next run's imports (pytest, hypothesis: ~3 s of compiling) much faster.
        sys.pycache_prefix = pycache
        sys.dont_write_bytecode = False  # Pyodide sets PYTHONDONTWRITEBYTECODE
        for root, _dirs, files in os.walk(site.getsitepackages()[0]):
            for name in files:
                os.utime(os.path.join(root, name), (_WHEEL_MTIME, _WHEEL_MTIME))
    else:
        sys.dont_write_bytecode = True


class _HypothesisProfile:
    """A pytest plugin: load a Pyodide profile once hypothesis' own plugin is registered.

    No example database: it would be written into the host's tree, where CPython's hypothesis
    (another version) keeps its own. Example counts are lowered per test through
    ``tests.runtime_support.examples``, since an explicit ``@settings`` overrides any profile.
    """

    def pytest_configure(self, config: object) -> None:
        from hypothesis import settings

        settings.register_profile("pyodide", database=None, deadline=None)
        settings.load_profile("pyodide")


def run_pytest(repo: str, pycache: str | None, args: list[str]) -> int:
    """Run pytest on ``args`` from ``repo``; return its exit status."""
    _setup(repo, pycache)
    import pytest

    return int(pytest.main(["-p", "no:cacheprovider", *args], plugins=[_HypothesisProfile()]))


def run_script(repo: str, pycache: str | None, args: list[str]) -> int:
    """Run ``args[0]`` as ``__main__`` with ``sys.argv = args`` (benchmarks, debugging)."""
    _setup(repo, pycache)
    sys.argv = list(args)
    try:
        runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
