"""Bridge operations. Each module registers its handlers in `bridge.ops.base.REGISTRY`."""

from bridge.ops import snapshot as _snapshot_ops  # noqa: F401  (registers fs.restore, fs.history)
