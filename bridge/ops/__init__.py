"""Bridge operations. Each module registers its handlers in `bridge.ops.base.REGISTRY`."""
