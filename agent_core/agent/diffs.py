"""Unified diffs computed on the device (shown to the user, kept in tool metadata)."""

from __future__ import annotations

import difflib

DIFF_MAX_CHARS = 200_000


def unified_diff(path: str, before: str | None, after: str | None, context: int = 3) -> str:
    """`git diff`-style text for one file; `None` means the file does not exist on that side."""
    a = (before or "").splitlines(keepends=True)
    b = (after or "").splitlines(keepends=True)
    for lines in (a, b):
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n\\ No newline at end of file\n"
    old = "/dev/null" if before is None else f"a/{path}"
    new = "/dev/null" if after is None else f"b/{path}"
    text = "".join(difflib.unified_diff(a, b, old, new, n=context))
    if len(text) > DIFF_MAX_CHARS:
        text = text[:DIFF_MAX_CHARS] + f"\n… diff cut at {DIFF_MAX_CHARS} characters\n"
    return text


def diff_stats(diff: str) -> tuple[int, int]:
    """(added, removed) line counts of a unified diff."""
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return added, removed
