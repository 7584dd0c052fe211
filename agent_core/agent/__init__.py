"""The agent core: a sans-I/O loop, opencode-style tools over the bridge, permissions, sessions.

Everything here imports only the standard library, so it runs unchanged on CPython and under
Pyodide. I/O happens through small interfaces the shell provides: a `Bridge` (anything with
`async call(op, args, on_event=...)`, e.g. `agent_core.client.KiteClient`), a `Provider`
(`agent_core.llm.types`; `agent_core.agent.local.LocalProvider` needs no model), and async
callbacks for approvals and questions.

How a UI drives it (the terminal in `bridge/cli_agent.py` is one such UI):

    gate = PermissionGate(Ruleset(), approve=ask_the_user)   # approve=None: asks are refused
    agent = Agent(provider, client, gate=gate, on_event=render, ask_user=answer_questions,
                  command_provider=LocalProvider())          # /read, /diff, /undo... locally
    result = await agent.run("add a --verbose flag and run the tests")
    # result.reason: end_turn | max_steps | max_tokens | aborted | rejected | error
    agent.abort()        # from any callback or signal handler: stops the step now
    agent.session        # Session.to_json() after each StepFinished event to save it

`render(event)` receives the events of `agent_core.agent.events` in order; `ask_the_user`
gets a `PermissionRequest` (title, permission, patterns, metadata such as a diff) and returns a
`PermissionReply` ("once" / "always" / "reject" with optional guidance for the model).

A UI that wants no asyncio driver at all can feed `loop.AgentLoop` itself: `submit(text)`,
then act on `next_action()` (`CallModel` / `RunTools` / `Done`), feeding back `feed(event)` and
`tool_result(call_id, result)`, and draining `events()`.
"""

from __future__ import annotations

from agent_core.agent.undo import UndoError

__all__ = ["UndoError"]
