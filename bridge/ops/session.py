"""`session.*` ops: conversation history kept on the bridge (see bridge/sessions.py).

Not `mutates`: read-only mode protects the workspace, and a device's own history is not part of
it. All but `session.get` run inline (one short SQLite transaction); `session.get` may return a
large envelope, so it gets a task of its own and does not hold up the read loop while it is sent.
"""

from __future__ import annotations

from typing import Any

from agent_core.rpc.errors import EINVAL, EIO, RpcError
from bridge.ops.base import OpContext, arg_int, arg_str, op
from bridge.sessions import MAX_TITLE, SessionStore, check_id

MAX_APPEND = 10_000  # messages per append


def _known(args: dict[str, Any], *keys: str) -> None:
    """Unknown arguments are refused, so a misspelt `after_seq` is not silently ignored."""
    unknown = set(args) - set(keys)
    if unknown:
        raise RpcError(EINVAL, f"unknown argument(s): {', '.join(sorted(map(str, unknown)))}")


def _store(ctx: OpContext) -> SessionStore:
    if ctx.sessions is None:
        raise RpcError(EIO, "this bridge has no session store")
    store: SessionStore = ctx.sessions
    return store


def _text(args: dict[str, Any], key: str) -> str:
    """An optional string argument that SQLite can store (a lone surrogate cannot be UTF-8)."""
    text = arg_str(args, key, "", allow_empty=True)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RpcError(EINVAL, f"argument '{key}' is not valid Unicode text") from None
    return text


def _title(args: dict[str, Any], key: str = "title") -> str:
    title = _text(args, key)
    if len(title) > MAX_TITLE:
        raise RpcError(EINVAL, f"argument '{key}' is longer than {MAX_TITLE} characters")
    return title


@op("session.create", inline=True)
async def create(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    _known(args, "id", "title", "model")
    sid = check_id(args["id"]) if args.get("id") is not None else None
    result = _store(ctx).create(
        sid,
        title=_title(args),
        model=_text(args, "model"),
        workspace=str(ctx.workspace.root),
        device_id=ctx.device_id,
    )
    ctx.audit["session"] = result["id"]
    return result


@op("session.list", inline=True)
async def list_(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    _known(args, "limit")
    limit = arg_int(args, "limit", 50, min_value=1, max_value=1000)
    return {"sessions": _store(ctx).list(limit)}


@op("session.get")
async def get(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    _known(args, "id", "after_seq", "limit")
    sid = check_id(args.get("id"))
    after = arg_int(args, "after_seq", -1, min_value=-1)
    limit = arg_int(args, "limit", -1, min_value=1)
    info, messages = _store(ctx).get(sid, after, limit)
    last = messages[-1]["seq"] if messages else after
    return {"session": info, "messages": messages, "more": last + 1 < info["messages"]}


@op("session.append", inline=True)
async def append(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    _known(args, "id", "messages", "usage", "title")
    sid = check_id(args.get("id"))
    raw = args.get("messages")
    if not isinstance(raw, list) or len(raw) > MAX_APPEND:
        raise RpcError(EINVAL, f"argument 'messages' must be a list of at most {MAX_APPEND}")
    pairs: list[tuple[int, Any]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("message"), dict):
            raise RpcError(EINVAL, "each message must be {'seq': int, 'message': object}")
        pairs.append((arg_int(item, "seq", min_value=0), item["message"]))
    if len({s for s, _ in pairs}) != len(pairs):
        raise RpcError(EINVAL, "duplicate seq in one append")
    usage = args.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise RpcError(EINVAL, "argument 'usage' must be an object")
    title = _title(args) or None
    next_seq = _store(ctx).append(sid, pairs, usage=usage, title=title)
    ctx.audit.update(session=sid, messages=len(pairs))
    return {"next_seq": next_seq}


@op("session.rename", inline=True)
async def rename(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    _known(args, "id", "title")
    sid = check_id(args.get("id"))
    return _store(ctx).rename(sid, _title(args))


@op("session.delete", inline=True)
async def delete(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    _known(args, "id")
    sid = check_id(args.get("id"))
    _store(ctx).delete(sid)
    ctx.audit["session"] = sid
    return {"deleted": True}
