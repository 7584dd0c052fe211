"""Undo and redo of a step's file changes, through the bridge's snapshots (`fs.restore`).

A step is one model turn and the tool calls it made; its `ChangeSet`s (one per file tool call)
carry `step` and, per file, the sha256 before and after. The bridge keeps every replaced content
as a blob, so undo only names hashes: `fs.restore {path, sha256 | "absent", if_match}` puts the
"before" content back, atomically, guarded by the "after" hash (and snapshots what it replaces,
which is what redo later restores).

Rules (as in an editor): undo takes the newest step with applied changes; redo the oldest undone
step after the last applied one; recording a new change drops what could be redone
(`drop_redo`). A step whose files changed on the host since is refused as a whole with
`UndoError("ECONFLICT")` before anything is written; a conflict that appears between the check
and the writes rolls back the files already restored.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from agent_core.agent.session import ChangeSet, Session
from agent_core.rpc.errors import ECONFLICT, ENOENT, RpcError

ABSENT = "absent"


class UndoError(Exception):
    """Undo/redo refused or failed; `code` is an RPC error code (ECONFLICT, ENOENT, ...)."""

    def __init__(self, code: str, message: str, paths: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.paths = paths or []


@dataclass(frozen=True)
class FileMove:
    """One file's net change in a step: from `start` to `end` (sha256, or "absent")."""

    path: str
    start: str
    end: str


def _unit(cs: ChangeSet) -> int | str:
    """What one undo reverts: a step; a change made outside the loop (step 0, e.g. a tool
    called directly or a session saved before steps were recorded) stands alone."""
    return cs.step if cs.step else cs.call_id


def undo_target(session: Session) -> list[ChangeSet]:
    """The change sets `undo` would revert: the newest step with applied changes."""
    applied = [cs for cs in session.changes if not cs.undone]
    if not applied:
        return []
    unit = _unit(applied[-1])
    return [cs for cs in session.changes if _unit(cs) == unit and not cs.undone]


def redo_target(session: Session) -> list[ChangeSet]:
    """The change sets `redo` would re-apply: the oldest undone step after the last applied."""
    last = max((i for i, cs in enumerate(session.changes) if not cs.undone), default=-1)
    tail = session.changes[last + 1 :]
    if not tail:
        return []
    unit = _unit(tail[0])
    return [cs for cs in tail if _unit(cs) == unit]


def drop_redo(session: Session) -> None:
    """A new change makes undone steps unreachable for redo: forget them. Undone change sets
    are always a suffix of the journal (undo takes the newest applied, redo the oldest undone),
    so this looks at the end only: O(1) per recorded change."""
    changes = session.changes
    while changes and changes[-1].undone:
        changes.pop()


def net_moves(sets: list[ChangeSet]) -> list[FileMove]:
    """Per path, from the first change's "before" to the last change's "after", in order."""
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    for cs in sets:
        for fc in cs.files:
            first.setdefault(fc.path, fc.before_sha256 or ABSENT)
            last[fc.path] = fc.after_sha256 or ABSENT
    return [FileMove(p, first[p], last[p]) for p in first if first[p] != last[p]]


async def _current(bridge: Any, path: str) -> str:
    try:
        res = await bridge.call("fs.stat", {"path": path, "hash": True})
    except RpcError as exc:
        if exc.code == ENOENT:
            return ABSENT
        raise
    return str(res.get("sha256") or ABSENT)


async def _restore(bridge: Any, path: str, sha: str, if_match: str) -> None:
    await bridge.call("fs.restore", {"path": path, "sha256": sha, "if_match": if_match})


async def _apply(
    bridge: Any, session: Session, moves: list[tuple[str, str, str]], what: str
) -> None:
    """Move each (path, expected now, target): all checked first, then written, rolled back on
    a late failure. Raises UndoError."""
    now = await asyncio.gather(*(_current(bridge, p) for p, _, _ in moves), return_exceptions=True)
    changed = []
    for (path, expected, _), cur in zip(moves, now, strict=True):
        if isinstance(cur, RpcError):
            raise UndoError(cur.code, f"{what} refused: {path}: {cur.message}", [path])
        if isinstance(cur, BaseException):
            raise cur
        if cur != expected:
            changed.append(path)
    if changed:
        raise UndoError(
            ECONFLICT,
            f"{what} refused: changed again on the host since that step: {', '.join(changed)} "
            "(nothing was restored)",
            changed,
        )
    done: list[tuple[str, str, str]] = []
    path = ""
    try:
        for path, expected, target in moves:
            await _restore(bridge, path, target, expected)
            done.append((path, expected, target))
    except RpcError as exc:
        for back, expected, target in reversed(done):  # best effort: back to where it was
            with contextlib.suppress(RpcError):
                await _restore(bridge, back, expected, target)
        done = []
        if exc.code == ENOENT and "snapshot" in exc.message:
            msg = f"{what} impossible: the bridge has no snapshot of {path}'s content"
        elif exc.code == ECONFLICT:
            msg = f"{what} refused: {path} changed on the host during the {what}"
        else:
            msg = f"{what} failed on {path}: {exc.message}"
        raise UndoError(exc.code, msg + " (nothing was changed)", [path]) from None
    finally:
        for changed_path, _, _ in done:
            session.seen.pop(changed_path, None)  # the model must read it again before writing


async def undo(bridge: Any, session: Session) -> list[str]:
    """Revert the newest step's file changes; returns the paths restored ([]: nothing to undo)."""
    sets = undo_target(session)
    moves = [(m.path, m.end, m.start) for m in net_moves(sets)]
    if moves:
        await _apply(bridge, session, moves, "undo")
    for cs in sets:
        cs.undone = True
    return [p for p, _, _ in moves]


async def redo(bridge: Any, session: Session) -> list[str]:
    """Re-apply the oldest undone step; returns the paths written ([]: nothing to redo)."""
    sets = redo_target(session)
    moves = [(m.path, m.start, m.end) for m in net_moves(sets)]
    if moves:
        await _apply(bridge, session, moves, "redo")
    for cs in sets:
        cs.undone = False
    return [p for p, _, _ in moves]
