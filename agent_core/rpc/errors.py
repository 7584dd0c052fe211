"""Error codes of the RPC protocol, shared by the bridge and every client.

The codes are part of the wire contract (see docs/protocol.md); add, never rename.
"""

from __future__ import annotations

from typing import Any

EINVAL = "EINVAL"  # malformed request or argument
ENOENT = "ENOENT"  # no such file or directory
EEXIST = "EEXIST"  # target exists and overwriting was not asked for
EISDIR = "EISDIR"  # a file operation named a directory
ENOTDIR = "ENOTDIR"  # a directory operation named a file
EACCES = "EACCES"  # outside the workspace, or denied by host policy
ECONFLICT = "ECONFLICT"  # an if_match hash did not match
ETOOBIG = "ETOOBIG"  # over a size limit
ETIMEDOUT = "ETIMEDOUT"  # an operation ran out of time
ECANCELED = "ECANCELED"  # cancelled by the client
EUNSUPPORTED = "EUNSUPPORTED"  # unknown op, or a feature this host does not offer
EBUSY = "EBUSY"  # too many requests in flight on this connection
ENOSPC = "ENOSPC"  # the host's disk is full
EIO = "EIO"  # an unexpected host-side failure (details in the bridge log, not on the wire)
EPLUGIN = "EPLUGIN"  # a Wasm plugin failed: its own error, a trap, or its memory limit

ALL_CODES = frozenset(
    {
        EINVAL,
        ENOENT,
        EEXIST,
        EISDIR,
        ENOTDIR,
        EACCES,
        ECONFLICT,
        ETOOBIG,
        ETIMEDOUT,
        ECANCELED,
        EUNSUPPORTED,
        EBUSY,
        ENOSPC,
        EIO,
        EPLUGIN,
    }
)


class RpcError(Exception):
    """An error that travels on the wire as `{"ok": false, "error": {...}}`."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return err

    @classmethod
    def from_wire(cls, err: Any) -> RpcError:
        if not isinstance(err, dict):
            return cls(EIO, f"malformed error object: {err!r}")
        details = err.get("details") if isinstance(err.get("details"), dict) else {}
        return cls(str(err.get("code", EIO)), str(err.get("message", "")), **details)
