"""The `*** Begin Patch` format (opencode's and Codex's `apply_patch`): parse it, apply it.

Pure functions over text, so the device computes every change before anything is written:

    *** Begin Patch
    *** Add File: hello.txt
    +Hello world
    *** Update File: src/app.py
    *** Move to: src/main.py
    @@ def greet():
    -    print("Hi")
    +    print("Hello, world!")
    *** Delete File: obsolete.txt
    *** End Patch

An update hunk is located by its context and removed lines: exactly first, then ignoring trailing
whitespace, then ignoring surrounding whitespace, then with typographic punctuation normalised
(models often "fix" quotes and dashes). `@@ <line>` first moves past a line equal to `<line>`;
`*** End of File` anchors a hunk at the end of the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

BEGIN = "*** Begin Patch"
END = "*** End Patch"
ADD = "*** Add File: "
DELETE = "*** Delete File: "
UPDATE = "*** Update File: "
MOVE = "*** Move to: "
EOF_MARK = "*** End of File"


class PatchError(ValueError):
    """The patch is malformed or does not apply; the message says where, for the model."""


@dataclass
class Chunk:
    context: str | None  # the text after `@@ `, if any
    old_lines: list[str] = field(default_factory=list)
    new_lines: list[str] = field(default_factory=list)
    end_of_file: bool = False


@dataclass
class FileOp:
    kind: Literal["add", "delete", "update"]
    path: str
    contents: str = ""  # add
    move_to: str | None = None  # update
    chunks: list[Chunk] = field(default_factory=list)  # update

    @property
    def paths(self) -> list[str]:
        return [self.path] + ([self.move_to] if self.move_to else [])


def _strip_heredoc(lines: list[str]) -> list[str]:
    """Accept a patch still wrapped in the shell heredoc models sometimes copy from examples."""
    heredoc = ("<<EOF", "<<'EOF'", '<<"EOF"')
    if len(lines) >= 2 and lines[0].strip() in heredoc and lines[-1].strip() == "EOF":
        return lines[1:-1]
    return lines


def parse_patch(text: str) -> list[FileOp]:
    """Parse a patch; raise PatchError naming the offending line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    lines = _strip_heredoc(lines)
    if not lines or lines[0].strip() != BEGIN:
        raise PatchError(f"the first line of the patch must be '{BEGIN}'")
    if lines[-1].strip() != END:
        raise PatchError(f"the last line of the patch must be '{END}'")
    body = lines[1:-1]
    ops: list[FileOp] = []
    i = 0
    while i < len(body):
        line = body[i]
        lineno = i + 2
        if line.startswith(ADD):
            op = FileOp("add", _path(line[len(ADD) :], lineno))
            i += 1
            added: list[str] = []
            while i < len(body) and not body[i].startswith("*** "):
                if not body[i].startswith("+"):
                    raise PatchError(
                        f"line {i + 2}: every line of an added file starts with '+' "
                        f"(got {body[i][:40]!r})"
                    )
                added.append(body[i][1:])
                i += 1
            op.contents = "\n".join(added) + "\n" if added else ""
            ops.append(op)
        elif line.startswith(DELETE):
            ops.append(FileOp("delete", _path(line[len(DELETE) :], lineno)))
            i += 1
        elif line.startswith(UPDATE):
            op = FileOp("update", _path(line[len(UPDATE) :], lineno))
            i += 1
            if i < len(body) and body[i].startswith(MOVE):
                op.move_to = _path(body[i][len(MOVE) :], i + 2)
                i += 1
            i = _parse_chunks(body, i, op)
            if not op.chunks and not op.move_to:
                raise PatchError(f"line {lineno}: '{UPDATE}{op.path}' has no changes")
            ops.append(op)
        elif not line.strip():
            i += 1
        else:
            raise PatchError(
                f"line {lineno}: expected '*** Add File:', '*** Delete File:' or "
                f"'*** Update File:', got {line[:60]!r}"
            )
    if not ops:
        raise PatchError("the patch contains no file operations")
    return ops


def _path(raw: str, lineno: int) -> str:
    path = raw.strip()
    if not path:
        raise PatchError(f"line {lineno}: missing file path")
    return path


def _parse_chunks(body: list[str], i: int, op: FileOp) -> int:
    chunk: Chunk | None = None
    while i < len(body):
        line = body[i]
        if line.startswith("*** ") and line.strip() != EOF_MARK:
            break
        if line.strip() == EOF_MARK:
            if chunk is None:
                raise PatchError(f"line {i + 2}: '{EOF_MARK}' outside a hunk")
            chunk.end_of_file = True
            i += 1
            continue
        if line.startswith("@@"):
            chunk = Chunk(line[2:].strip() or None)
            op.chunks.append(chunk)
            i += 1
            continue
        if chunk is None:  # the first hunk may omit its `@@` line
            chunk = Chunk(None)
            op.chunks.append(chunk)
        if chunk.end_of_file:
            raise PatchError(f"line {i + 2}: lines after '{EOF_MARK}' need a new '@@'")
        tag, rest = (line[:1], line[1:]) if line else (" ", "")
        if tag == " ":
            chunk.old_lines.append(rest)
            chunk.new_lines.append(rest)
        elif tag == "-":
            chunk.old_lines.append(rest)
        elif tag == "+":
            chunk.new_lines.append(rest)
        else:
            raise PatchError(
                f"line {i + 2}: a hunk line starts with ' ', '-' or '+' (got {line[:60]!r})"
            )
        i += 1
    for c in op.chunks:
        if not c.old_lines and not c.new_lines:
            raise PatchError(f"'{UPDATE}{op.path}': empty hunk")
    return i


# -- applying ------------------------------------------------------------------------------

_PUNCT = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\u00a0": " ",
        "\u2002": " ",
        "\u2003": " ",
        "\u2009": " ",
        "\u202f": " ",
    }
)

_NORMALISERS: tuple[Callable[[str], str], ...] = (
    lambda s: s,
    str.rstrip,
    str.strip,
    lambda s: s.strip().translate(_PUNCT),
)


def seek(lines: list[str], pattern: list[str], start: int, at_end: bool) -> int | None:
    """Index of the first occurrence of `pattern` in `lines` at or after `start`, or None."""
    if not pattern:
        return start
    if len(pattern) > len(lines):
        return None
    last = len(lines) - len(pattern)
    candidates = range(start, last + 1)
    if at_end:  # try the end of the file first
        candidates = range(last, last + 1) if last >= start else range(0)
    for norm in _NORMALISERS:
        want = [norm(p) for p in pattern]
        for i in candidates:
            if all(norm(lines[i + k]) == want[k] for k in range(len(pattern))):
                return i
    if at_end:  # `*** End of File` is a hint, not a promise
        return seek(lines, pattern, start, False)
    return None


def apply_chunks(path: str, content: str, chunks: list[Chunk]) -> str:
    """Apply update hunks to `content`; the line endings (LF or CRLF) are kept."""
    eol = "\r\n" if "\r\n" in content else "\n"
    text = content.replace("\r\n", "\n") if eol == "\r\n" else content
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    replacements: list[tuple[int, int, list[str]]] = []
    pos = 0
    for n, chunk in enumerate(chunks, 1):
        if chunk.context is not None:
            found = seek(lines, [chunk.context], pos, False)
            if found is None:
                raise PatchError(f"{path}: hunk {n}: context line not found: {chunk.context!r}")
            pos = found + 1
        if not chunk.old_lines:  # pure insertion: after the context line, else at the end
            at = pos if chunk.context is not None else len(lines)
            replacements.append((at, 0, chunk.new_lines))
            continue
        old, new = chunk.old_lines, chunk.new_lines
        found = seek(lines, old, pos, chunk.end_of_file)
        if found is None and old and old[-1] == "":
            old = old[:-1]
            new = new[:-1] if new and new[-1] == "" else new
            found = seek(lines, old, pos, chunk.end_of_file)
        if found is None:
            shown = "\n".join(chunk.old_lines[:8])
            raise PatchError(
                f"{path}: hunk {n}: these lines were not found in the file "
                f"(read the file again and resend the hunk with the exact current text):\n{shown}"
            )
        replacements.append((found, len(old), new))
        pos = found + len(old)
    for at, length, new in sorted(replacements, key=lambda r: r[0], reverse=True):
        lines[at : at + length] = new
    out = "\n".join(lines)
    if lines:  # like Codex: a patched file always ends with a newline
        out += "\n"
    return out.replace("\n", "\r\n") if eol == "\r\n" else out
