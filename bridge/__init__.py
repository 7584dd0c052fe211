"""Kite's bridge: the small, audited host-side server the agent's hands go through."""

from agent_core import __version__

__all__ = ["__version__"]
