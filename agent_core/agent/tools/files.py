"""File tools over the bridge: read, write, edit, apply_patch, glob, grep, list.

Every change is computed on the device from content read through the bridge, shown as a diff,
and written with `if_match` = the SHA-256 of the content it was computed from, so a file changed
on the host in the meantime is never overwritten silently (the bridge answers ECONFLICT).
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from agent_core.agent.diffs import diff_stats, unified_diff
from agent_core.agent.patch import FileOp, PatchError, apply_chunks, parse_patch
from agent_core.agent.session import ChangeSet, FileChange
from agent_core.agent.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    bridge_error,
    norm_path,
)
from agent_core.agent.truncate import MAX_BYTES, MAX_LINE_CHARS, cut_line
from agent_core.agent.undo import drop_redo
from agent_core.llm.types import ToolSpec
from agent_core.rpc.errors import RpcError

READ_DEFAULT_LIMIT = 2000
GLOB_LIMIT = 100
GREP_LIMIT = 100
LIST_LIMIT = 100
OUTPUT_PREFIX = "kite-output:"

_PATH_DOC = "relative to the workspace root, '/'-separated (e.g. src/app.py)"


def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


# -- shared helpers ---------------------------------------------------------------------------


@dataclass
class Current:
    text: str
    sha256: str


async def read_current(ctx: ToolContext, path: str) -> Current | None:
    """The file's text and hash now, or None if it does not exist."""
    try:
        res = await ctx.bridge.call("fs.read", {"path": path})
    except RpcError as exc:
        if exc.code == "ENOENT":
            return None
        if exc.code == "EINVAL" and "UTF-8" in exc.message:
            raise ToolError(f"{path} is a binary file; text tools cannot change it") from None
        raise bridge_error(exc, path) from None
    return Current(res["content"], res["sha256"])


async def write_checked(ctx: ToolContext, path: str, content: str, if_match: str | None) -> str:
    """Write through the bridge; a changed file is a clear error, never an overwrite."""
    args: dict[str, Any] = {"path": path, "content": content}
    if if_match is not None:
        args["if_match"] = if_match
    try:
        res = await ctx.bridge.call("fs.write", args)
    except RpcError as exc:
        if exc.code == "ECONFLICT":
            ctx.session.seen.pop(path, None)
            raise ToolError(
                f"{path} was changed on the host after it was read, so it was not written. "
                "Read it again and redo the change on the current content."
            ) from None
        raise bridge_error(exc, f"writing {path}") from None
    sha: str = res["sha256"]
    ctx.session.seen[path] = sha
    return sha


def record_change(ctx: ToolContext, changes: list[FileChange]) -> None:
    drop_redo(ctx.session)  # a new change: undone steps can no longer be redone
    step = ctx.session.step_seq
    ctx.session.changes.append(ChangeSet(ctx.call_id, ctx.tool, changes, step=step))


def _summary(diff: str) -> str:
    added, removed = diff_stats(diff)
    return f"+{added} -{removed}"


# -- read -------------------------------------------------------------------------------------

READ = ToolSpec(
    "read",
    "Read a text file from the workspace. Output lines are numbered like `cat -n` "
    "(number, tab, text); the numbers are not part of the file. Reads up to 2000 lines from "
    "`offset` (1-based; default 1); lines over 2000 characters are cut. For a long file, read "
    "the part you need with offset/limit. Read several files in one step when you need them. "
    "Full outputs of earlier tool calls that were truncated can be read as "
    f"`{OUTPUT_PREFIX}<call id>`.",
    _obj(
        {
            "file_path": {"type": "string", "description": f"the file, {_PATH_DOC}"},
            "offset": {
                "type": "integer",
                "minimum": 1,
                "description": "line number to start at, 1-based (default 1)",
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "description": f"number of lines to read (default {READ_DEFAULT_LIMIT})",
            },
        },
        ["file_path"],
    ),
)


def number_lines(lines: list[str], first: int) -> tuple[list[str], int]:
    """`cat -n` lines within the output byte budget: (lines, how many were taken)."""
    rows = [
        f"{first + i:>6}\t{line if len(line) <= MAX_LINE_CHARS else cut_line(line)}"
        for i, line in enumerate(lines)
    ]
    if len("\n".join(rows).encode()) <= MAX_BYTES:  # the common case: one encode
        return rows, len(rows)
    used = 0
    for n, row in enumerate(rows):
        used += len(row.encode()) + 1
        if used > MAX_BYTES and n:
            return rows[:n], n
    return rows, len(rows)


def _format_read(path: str, content: str, first: int, total: int) -> tuple[str, int]:
    lines = content.split("\n")
    if content.endswith("\n") or not content:
        lines.pop()
    if total == 0:
        return f"({path} is empty)", 0
    if not lines or first > total:
        return f"({path} has {total} lines; offset {first} is past the end)", 0
    rows, n = number_lines(lines, first)
    last = first + n - 1
    if last < total:
        rows.append(
            f"\n(Showing lines {first}-{last} of {total}. Use offset={last + 1} to read more.)"
        )
    else:
        rows.append(f"\n(End of file: {total} lines.)")
    return "\n".join(rows), n


async def _similar(ctx: ToolContext, path: str) -> str:
    parent, _, name = path.rpartition("/")
    try:
        res = await ctx.bridge.call("fs.list", {"path": parent or ".", "limit": 1000})
    except RpcError:
        return ""
    names = [e["name"] for e in res.get("entries", [])]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    close += [n for n in names if name.lower() in n.lower() and n not in close][:3]
    if not close:
        return ""
    return " Did you mean: " + ", ".join(f"{parent + '/' if parent else ''}{n}" for n in close)


async def run_read(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    raw = args["file_path"]
    first = int(args.get("offset") or 1)
    limit = int(args.get("limit") or READ_DEFAULT_LIMIT)
    if raw.startswith(OUTPUT_PREFIX):
        key = raw[len(OUTPUT_PREFIX) :]
        full = ctx.session.outputs.get(key)
        if full is None:
            raise ToolError(f"no kept output for call {key!r}")
        lines = full.split("\n")
        text, _ = _format_read(
            raw, "\n".join(lines[first - 1 : first - 1 + limit]), first, len(lines)
        )
        return ToolResult(text, title=raw)
    path = norm_path(raw)
    await ctx.ask("read", [path], f"Read {path}")
    try:
        res = await ctx.bridge.call(
            "fs.read", {"path": path, "start_line": first, "end_line": first + limit - 1}
        )
    except RpcError as exc:
        if exc.code == "ENOENT":
            raise ToolError(f"{path}: file not found.{await _similar(ctx, path)}") from None
        if exc.code == "EISDIR":
            raise ToolError(
                f"{path} is a directory; use the list tool to see its contents"
            ) from None
        if exc.code == "EINVAL" and "UTF-8" in exc.message:
            raise ToolError(
                f"{path} is a binary file (not UTF-8 text); it cannot be shown"
            ) from None
        raise bridge_error(exc, path) from None
    ctx.session.seen[path] = res["sha256"]
    total = int(res.get("total_lines", 0))
    text, n = _format_read(path, res["content"], first, total)
    return ToolResult(
        text,
        title=path,
        metadata={"path": path, "first_line": first, "lines": n, "total_lines": total},
    )


# -- write ------------------------------------------------------------------------------------

WRITE = ToolSpec(
    "write",
    "Create a file, or replace the whole content of an existing one. To change part of an "
    "existing file prefer `edit` (smaller, safer). Overwriting an existing file requires having "
    "read it in this session first; if it changed on the host since, the write is refused and "
    "you must read it again. Parent directories are created.",
    _obj(
        {
            "file_path": {"type": "string", "description": f"the file, {_PATH_DOC}"},
            "content": {"type": "string", "description": "the complete new content"},
        },
        ["file_path", "content"],
    ),
)


async def run_write(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    path = norm_path(args["file_path"])
    content: str = args["content"]
    cur = await read_current(ctx, path)
    if cur is not None:
        seen = ctx.session.seen.get(path)
        if seen is None:
            raise ToolError(
                f"{path} exists: read it before overwriting it (or use edit for a partial change)"
            )
        if seen != cur.sha256:
            raise ToolError(
                f"{path} changed on the host since you read it; read it again before writing"
            )
    diff = unified_diff(path, cur.text if cur else None, content)
    await ctx.ask("edit", [path], f"{'Overwrite' if cur else 'Create'} {path}", {"diff": diff})
    sha = await write_checked(ctx, path, content, cur.sha256 if cur else None)
    record_change(
        ctx, [FileChange(path, cur.text if cur else None, content, cur and cur.sha256, sha)]
    )
    lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
    verb = "Overwrote" if cur else "Created"
    return ToolResult(
        f"{verb} {path} ({lines} lines).",
        title=f"{path} {_summary(diff)}",
        metadata={"path": path, "diff": diff, "created": cur is None},
    )


# -- edit -------------------------------------------------------------------------------------

EDIT = ToolSpec(
    "edit",
    "Replace an exact string in a file. `old_string` must match the file's current text exactly, "
    "including whitespace and indentation (copy it from `read` output without the line-number "
    "prefix), and must occur exactly once unless `replace_all` is true; include enough "
    "surrounding lines to make it unique. An empty `old_string` creates a new file with "
    "`new_string` as content. The change is shown to the user as a diff.",
    _obj(
        {
            "file_path": {"type": "string", "description": f"the file, {_PATH_DOC}"},
            "old_string": {"type": "string", "description": "the exact text to replace"},
            "new_string": {
                "type": "string",
                "description": "the replacement (must differ from old_string)",
            },
            "replace_all": {
                "type": "boolean",
                "description": "replace every occurrence (default false)",
            },
        },
        ["file_path", "old_string", "new_string"],
    ),
)


def _loose_line(text: str, old: str) -> int | None:
    """1-based line where `old` matches ignoring indentation/trailing spaces, for a hint."""
    want = [ln.strip() for ln in old.strip("\n").split("\n")]
    lines = [ln.strip() for ln in text.split("\n")]
    for i in range(len(lines) - len(want) + 1):
        if lines[i : i + len(want)] == want:
            return i + 1
    return None


def replace_exact(
    path: str, content: str, old: str, new: str, replace_all: bool = False
) -> tuple[str, int]:
    """Pure exact replacement: (new content, replacements). Raises ToolError with a hint."""
    if old == new:
        raise ToolError("old_string and new_string are identical: nothing to change")
    if "\r\n" in content and "\r" not in old:  # the model writes LF; keep the file's CRLF
        old = old.replace("\n", "\r\n")
        new = new.replace("\n", "\r\n")
    count = content.count(old)
    if count == 0:
        hint = ""
        line = _loose_line(content.replace("\r\n", "\n"), old.replace("\r\n", "\n"))
        if line is not None:
            hint = (
                f" A match that differs only in whitespace/indentation starts at line {line}; "
                "copy the exact text from the file."
            )
        elif old.lstrip().split("\t", 1)[0].strip().isdigit():
            hint = " Do not include the line-number prefix of `read` output."
        raise ToolError(f"old_string was not found in {path}.{hint} Read the file again if unsure.")
    if count > 1 and not replace_all:
        raise ToolError(
            f"old_string occurs {count} times in {path}; include more surrounding lines to make "
            "it unique, or set replace_all to true"
        )
    return content.replace(old, new) if replace_all else content.replace(old, new, 1), count


async def run_edit(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    path = norm_path(args["file_path"])
    old: str = args["old_string"]
    new: str = args["new_string"]
    cur = await read_current(ctx, path)
    if cur is None:
        if old:
            raise ToolError(f"{path}: file not found (an empty old_string creates a new file)")
        after, count = new, 1
    elif not old:
        raise ToolError(f"{path} already exists; old_string must not be empty (or use write)")
    else:
        after, count = replace_exact(path, cur.text, old, new, bool(args.get("replace_all")))
    before = cur.text if cur else None
    diff = unified_diff(path, before, after)
    await ctx.ask("edit", [path], f"Edit {path}", {"diff": diff})
    sha = await write_checked(ctx, path, after, cur.sha256 if cur else None)
    record_change(ctx, [FileChange(path, before, after, cur and cur.sha256, sha)])
    msg = (
        f"Created {path}."
        if cur is None
        else f"Edited {path}: {count} replacement{'s' if count > 1 else ''}."
    )
    return ToolResult(
        msg,
        title=f"{path} {_summary(diff)}",
        metadata={"path": path, "diff": diff, "replacements": count},
    )


# -- apply_patch ------------------------------------------------------------------------------

APPLY_PATCH = ToolSpec(
    "apply_patch",
    "Edit files with a patch in this format (paths relative to the workspace root):\n"
    "*** Begin Patch\n"
    "*** Add File: path/new.txt\n"
    "+every line of a new file starts with +\n"
    "*** Update File: path/app.py\n"
    "*** Move to: path/main.py   (optional rename)\n"
    "@@ def greet():   (optional: a line just above the change, to locate it)\n"
    " unchanged context line\n"
    "-removed line\n"
    "+added line\n"
    "*** Delete File: path/old.txt\n"
    "*** End Patch\n"
    "Give about 3 lines of unchanged context around each change. Every hunk is checked before "
    "anything is written: if one does not apply, no file changes.",
    _obj(
        {"patch_text": {"type": "string", "description": "the full patch, Begin to End"}},
        ["patch_text"],
    ),
)


async def run_apply_patch(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    try:
        ops = parse_patch(args["patch_text"])
    except PatchError as exc:
        raise ToolError(f"invalid patch: {exc}") from None
    for op in ops:
        op.path = norm_path(op.path)
        if op.move_to:
            op.move_to = norm_path(op.move_to)
    paths = list(dict.fromkeys(p for op in ops for p in op.paths))
    found = await asyncio.gather(*(read_current(ctx, p) for p in paths))
    original: dict[str, Current | None] = dict(zip(paths, found, strict=True))
    state: dict[str, str | None] = {p: (c.text if c else None) for p, c in original.items()}
    for op in ops:
        _apply_op(op, state)
    changed = [p for p in paths if state[p] != (original[p].text if original[p] else None)]
    if not changed:
        raise ToolError("the patch changes nothing")
    diffs = {
        p: unified_diff(p, original[p].text if original[p] else None, state[p]) for p in changed
    }
    diff = "".join(diffs.values())
    await ctx.ask("edit", changed, "Apply patch to " + ", ".join(changed), {"diff": diff})
    done: list[FileChange] = []
    try:
        for p in changed:  # writes and creations first, deletions last: a move never loses data
            if state[p] is not None:
                cur = original[p]
                sha = await write_checked(ctx, p, state[p] or "", cur.sha256 if cur else None)
                done.append(
                    FileChange(p, cur.text if cur else None, state[p], cur and cur.sha256, sha)
                )
        for p in changed:
            cur = original[p]
            if state[p] is None and cur is not None:
                await _delete_checked(ctx, p, cur.sha256)
                done.append(FileChange(p, cur.text, None, cur.sha256, None))
    except ToolError as exc:
        if done:
            record_change(ctx, done)
            written = ", ".join(c.path for c in done)
            raise ToolError(f"{exc} (already applied to: {written})") from None
        raise
    record_change(ctx, done)
    lines = []
    for op in ops:
        if op.kind == "add":
            lines.append(f"A {op.path}")
        elif op.kind == "delete":
            lines.append(f"D {op.path}")
        elif op.move_to and op.move_to != op.path:
            lines.append(f"M {op.move_to} (moved from {op.path})")
        else:
            lines.append(f"M {op.path}")
    return ToolResult(
        "Success. Updated the following files:\n" + "\n".join(lines),
        title=", ".join(changed) + f" {_summary(diff)}",
        metadata={"diff": diff, "files": [{"path": p, "diff": diffs[p]} for p in changed]},
    )


def _apply_op(op: FileOp, state: dict[str, str | None]) -> None:
    try:
        if op.kind == "add":
            if state[op.path] is not None:
                raise ToolError(f"*** Add File: {op.path} already exists; use *** Update File")
            state[op.path] = op.contents
        elif op.kind == "delete":
            if state[op.path] is None:
                raise ToolError(f"*** Delete File: {op.path} does not exist")
            state[op.path] = None
        else:
            text = state[op.path]
            if text is None:
                raise ToolError(f"*** Update File: {op.path} does not exist")
            new = apply_chunks(op.path, text, op.chunks) if op.chunks else text
            if op.move_to and op.move_to != op.path:
                if state[op.move_to] is not None:
                    raise ToolError(f"*** Move to: {op.move_to} already exists")
                state[op.path] = None
                state[op.move_to] = new
            else:
                state[op.path] = new
    except PatchError as exc:
        raise ToolError(f"patch does not apply, nothing was written: {exc}") from None


async def _delete_checked(ctx: ToolContext, path: str, sha: str) -> None:
    try:
        st = await ctx.bridge.call("fs.stat", {"path": path, "hash": True})
        if st.get("sha256") != sha:
            raise ToolError(f"{path} was changed on the host after it was read; not deleted")
        await ctx.bridge.call("fs.delete", {"path": path})
    except RpcError as exc:
        raise bridge_error(exc, f"deleting {path}") from None
    ctx.session.seen.pop(path, None)


# -- glob -------------------------------------------------------------------------------------

GLOB = ToolSpec(
    "glob",
    "Find files by name pattern, e.g. `**/*.py` or `src/**/test_*.ts`. A pattern without `/` "
    "matches file names at any depth (`*.md` finds every Markdown file). Skips .git and "
    "gitignored files. Returns paths relative to the workspace root, sorted.",
    _obj(
        {
            "pattern": {"type": "string", "description": "glob: * ? [..] within a name, ** across"},
            "path": {"type": "string", "description": f"directory to search, {_PATH_DOC}"},
        },
        ["pattern"],
    ),
)


async def run_glob(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    pattern: str = args["pattern"].strip()
    path = norm_path(args.get("path") or ".")
    await ctx.ask("glob", [pattern], f"Find {pattern}")
    effective = pattern if "/" in pattern else f"**/{pattern}"
    try:
        res = await ctx.bridge.call(
            "fs.glob", {"pattern": effective, "path": path, "limit": GLOB_LIMIT}
        )
    except RpcError as exc:
        raise bridge_error(exc, f"glob {pattern}") from None
    found: list[str] = res["paths"]
    if not found:
        return ToolResult("No files found", title=pattern, metadata={"count": 0})
    out = "\n".join(found)
    if res.get("truncated"):
        out += f"\n\n(Showing the first {GLOB_LIMIT} matches; use a more specific pattern/path.)"
    return ToolResult(out, title=pattern, metadata={"count": len(found)})


# -- grep -------------------------------------------------------------------------------------

GREP = ToolSpec(
    "grep",
    "Search file contents with a regular expression (Python `re` syntax, e.g. `def \\w+_test`, "
    "`TODO|FIXME`). Skips .git, gitignored and binary files. Returns matching lines as "
    "`path:` then `  Line N: text`, grouped by file. Narrow with `path` and `include` "
    "(a file-name glob such as `*.py`).",
    _obj(
        {
            "pattern": {"type": "string", "description": "regular expression"},
            "path": {"type": "string", "description": f"directory or file, {_PATH_DOC}"},
            "include": {"type": "string", "description": "only files matching this glob"},
        },
        ["pattern"],
    ),
)


async def run_grep(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    pattern: str = args["pattern"]
    path = norm_path(args.get("path") or ".")
    await ctx.ask("grep", [pattern], f"Search for {pattern}")
    req: dict[str, Any] = {"pattern": pattern, "path": path, "max_results": GREP_LIMIT}
    if args.get("include"):
        req["glob"] = args["include"]
    try:
        res = await ctx.bridge.call("fs.grep", req)
    except RpcError as exc:
        if exc.code == "EINVAL":
            raise ToolError(f"grep: {exc.message} (escape regex characters like ( [ . *)") from None
        raise bridge_error(exc, f"grep {pattern}") from None
    matches: list[dict[str, Any]] = res["matches"]
    if not matches:
        return ToolResult("No matches found", title=pattern, metadata={"count": 0})
    lines = [f"Found {len(matches)}{'+' if res.get('truncated') else ''} matches"]
    current = None
    for m in matches:
        if m["path"] != current:
            current = m["path"]
            lines.append(f"\n{current}:")
        lines.append(f"  Line {m['line']}: {m['text']}")
    if res.get("truncated"):
        lines.append(f"\n(Showing the first {GREP_LIMIT} matches; narrow the search.)")
    return ToolResult("\n".join(lines), title=pattern, metadata={"count": len(matches)})


# -- list -------------------------------------------------------------------------------------

LIST = ToolSpec(
    "list",
    "List the files under a directory as an indented tree (directories end with `/`), skipping "
    ".git and gitignored files. Shows the shallowest entries first when there are many; list a "
    "subdirectory or use glob to see more. Prefer glob/grep when you know what you look for.",
    _obj(
        {
            "path": {
                "type": "string",
                "description": f"directory (default: the root), {_PATH_DOC}",
            },
            "ignore": {
                "type": "array",
                "items": {"type": "string"},
                "description": "glob patterns of paths to leave out",
            },
        },
        [],
    ),
)


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    return any(
        fnmatch.fnmatch(path, p) or any(fnmatch.fnmatch(x, p) for x in parts) for p in patterns
    )


def render_tree(
    base: str, files: list[str], dirs: list[str] | None = None, label: str = "(empty or ignored)"
) -> str:
    """An indented tree of paths relative to `base`; `dirs` show with `label`."""
    tree: dict[str, Any] = {}
    for rel in files:
        node = tree
        parts = rel.split("/")
        for d in parts[:-1]:
            node = node.setdefault(d + "/", {})
        node.setdefault(parts[-1], None)
    for rel in dirs or []:  # directories with nothing listed in them
        tree.setdefault(f"{rel}/ {label}", None)
    out = [f"{base}/" if base != "." else "./"]

    def walk(node: dict[str, Any], depth: int) -> None:
        for name in sorted(node, key=lambda n: (not n.split(" ")[0].endswith("/"), n)):
            out.append("  " * depth + name)
            if node[name]:
                walk(node[name], depth + 1)

    walk(tree, 1)
    return "\n".join(out)


async def run_list(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    path = norm_path(args.get("path") or ".")
    ignore = [p for p in args.get("ignore") or [] if isinstance(p, str)]
    await ctx.ask("list", [path], f"List {path}")
    try:
        res, top = await asyncio.gather(
            ctx.bridge.call("fs.glob", {"pattern": "**", "path": path, "limit": 2000}),
            ctx.bridge.call("fs.list", {"path": path, "limit": 1000}),
        )
    except RpcError as exc:
        if exc.code == "ENOTDIR":
            raise ToolError(f"{path} is a file; use read to see it") from None
        raise bridge_error(exc, f"list {path}") from None
    prefix = "" if path == "." else path + "/"
    rels = [p[len(prefix) :] for p in res["paths"] if p.startswith(prefix)]
    rels = [r for r in rels if not _ignored(r, ignore)]
    # Directories with nothing listable (empty, or all ignored) still show at the top level.
    top_dirs = [
        e["name"]
        for e in top.get("entries", [])
        if e["type"] == "dir" and e["name"] != ".git" and not _ignored(e["name"], ignore)
    ]
    shown = sorted(rels, key=lambda r: (r.count("/"), r))[:LIST_LIMIT]
    dirs = [d for d in top_dirs if not any(r.startswith(d + "/") for r in shown)]
    label = "(not listed: too many files)" if res.get("truncated") else "(empty or ignored)"
    text = render_tree(path, shown, dirs, label)
    more = len(rels) - len(shown)
    if more > 0 or res.get("truncated"):
        text += (
            f"\n\n({more}{'+' if res.get('truncated') else ''} more files not shown; "
            "list a subdirectory or use glob.)"
        )
    if not rels and not dirs:
        text += "\n  (empty)"
    return ToolResult(text, title=path, metadata={"files": len(rels)})


FILE_TOOLS = [
    Tool(READ, run_read, "read", ("file_path",), {"path": "file_path", "filename": "file_path"}),
    Tool(WRITE, run_write, "write", ("file_path",), {"path": "file_path", "text": "content"}),
    Tool(
        EDIT,
        run_edit,
        "write",
        ("file_path",),
        {"path": "file_path", "old_str": "old_string", "new_str": "new_string"},
    ),
    Tool(
        APPLY_PATCH,
        run_apply_patch,
        "exclusive",
        (),
        {"input": "patch_text", "patch": "patch_text"},
    ),
    Tool(GLOB, run_glob, "read", ("path",)),
    Tool(GREP, run_grep, "read", ("path",), {"glob": "include"}),
    Tool(LIST, run_list, "read", ("path",)),
]
