"""Fetch the pure-Python wheels that the in-Pyodide test run needs, once, into a cache directory.

    python tests/pyodide/fetch_wheels.py [--dest DIR]

The pins and their sha256 hashes are in ``requirements.txt`` beside this file. Pyodide runs
Python 3.14, so pip is told the target (``--python-version 3.14 --platform any``) rather than
using the running interpreter's; ``--require-hashes`` makes a changed upload fail loudly. When
every pinned wheel is already in the cache with the right hash this does nothing (no network),
so it is cheap to call before every run. Exit status 0 on success, 1 with pip's error otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REQUIREMENTS = HERE / "requirements.txt"
DEFAULT_DEST = REPO / ".cache" / "pyodide-wheels"
PYTHON_VERSION = "3.14"
"""Pyodide 314.x runs CPython 3.14."""

_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def pins(requirements: Path = REQUIREMENTS) -> dict[str, tuple[str, str]]:
    """Return ``{normalized name: (version, sha256)}`` from the requirements file."""
    text = requirements.read_text("utf-8").replace("\\\n", " ")
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        pin, digest = _PIN.match(line), _HASH.search(line)
        if pin and digest:
            out[normalize(pin.group(1))] = (pin.group(2), digest.group(1))
    return out


def normalize(name: str) -> str:
    """A distribution name as it appears in a wheel's file name (PEP 427/503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def missing(dest: Path) -> list[str]:
    """The pinned ``name==version`` whose wheel is absent from ``dest`` or has a wrong hash."""
    result = []
    for name, (version, digest) in pins().items():
        found = sorted(dest.glob(f"{name}-{version}-*.whl")) if dest.is_dir() else []
        ok = any(hashlib.sha256(path.read_bytes()).hexdigest() == digest for path in found)
        if not ok:
            result.append(f"{name}=={version}")
    return result


def fetch(dest: Path) -> int:
    todo = missing(dest)
    if not todo:
        print(f"pyodide wheels: up to date in {dest}")
        return 0
    print(f"pyodide wheels: fetching {', '.join(todo)} into {dest}", flush=True)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--platform",
        "any",
        "--require-hashes",
        "--requirement",
        str(REQUIREMENTS),
        "--dest",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        # Some registry mirrors print harmless "Location ... is ignored" warnings: drop them.
        lines = proc.stderr.splitlines()
        print("\n".join(line for line in lines if "is ignored" not in line), file=sys.stderr)
        return 1
    still = missing(dest)
    if still:
        print(f"pyodide wheels: still missing after pip download: {still}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    return fetch(parser.parse_args(argv).dest)


if __name__ == "__main__":
    sys.exit(main())
