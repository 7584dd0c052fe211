"""Cut tool output to what a model can usefully read, and say exactly what was left out.

Limits follow opencode (2000 lines, 50 KB). Command output keeps mostly its end (errors and test
summaries come last); file-like output keeps its beginning. The caller keeps the full text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MAX_LINES = 2000
MAX_BYTES = 50 * 1024
MAX_LINE_CHARS = 2000

Keep = Literal["head", "tail", "both"]


@dataclass(frozen=True)
class Truncated:
    text: str
    truncated: bool
    total_lines: int
    total_bytes: int
    omitted_lines: int = 0


def cut_line(line: str, max_chars: int = MAX_LINE_CHARS) -> str:
    if len(line) <= max_chars:
        return line
    return line[:max_chars] + f"… [{len(line) - max_chars} more characters]"


def _take(lines: list[str], max_lines: int, max_bytes: int) -> list[str]:
    """The longest prefix of `lines` within both budgets (a newline counts one byte)."""
    out: list[str] = []
    used = 0
    for line in lines[:max_lines]:
        size = len(line.encode("utf-8", "surrogatepass")) + 1
        if used + size > max_bytes:
            break
        out.append(line)
        used += size
    return out


def truncate(
    text: str, *, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES, keep: Keep = "head"
) -> Truncated:
    """Return `text` cut to `max_lines` / `max_bytes`, with a marker where lines were dropped."""
    total_bytes = len(text.encode("utf-8", "surrogatepass"))
    lines = text.split("\n")
    total_lines = len(lines)
    if total_lines <= max_lines and total_bytes <= max_bytes:
        return Truncated(text, False, total_lines, total_bytes)
    lines = [cut_line(line) for line in lines]
    if keep == "head":
        head, tail = _take(lines, max_lines, max_bytes), []
    elif keep == "tail":
        head, tail = [], _take(lines[::-1], max_lines, max_bytes)[::-1]
    else:  # a fifth of the budget for the beginning, the rest for the end
        head = _take(lines, max(1, max_lines // 5), max_bytes // 5)
        tail = _take(lines[len(head) :][::-1], max_lines - len(head), max_bytes - max_bytes // 5)
        tail = tail[::-1]
    omitted = total_lines - len(head) - len(tail)
    if omitted == 0:  # only over-long lines were cut
        return Truncated("\n".join(lines), True, total_lines, total_bytes)
    marker = f"[… {omitted} lines omitted …]"
    parts = [*head, marker, *tail] if head else [marker, *tail]
    if not tail:
        parts = [*head, marker]
    return Truncated("\n".join(parts), True, total_lines, total_bytes, omitted)
