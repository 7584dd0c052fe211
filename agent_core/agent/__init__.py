"""The agent core: a sans-I/O loop, opencode-style tools over the bridge, permissions, sessions.

Everything here imports only the standard library, so it runs unchanged on CPython and under
Pyodide. I/O happens through small interfaces the shell provides: a `Bridge` (anything with
`async call(op, args, on_event=...)`, e.g. `agent_core.client.KiteClient`), a `Provider`
(`agent_core.llm.types`), and async callbacks for approvals and questions.
"""

from __future__ import annotations
