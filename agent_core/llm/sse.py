"""A sans-I/O parser for Server-Sent Events (the WHATWG `text/event-stream` format).

Provider streams (OpenAI Chat Completions, Anthropic Messages) are SSE. The parser is fed the
response body in whatever pieces the network delivers — a line, an event or a multi-byte UTF-8
character may be split anywhere — and returns the complete events. No I/O, so the same code runs
on CPython and under Pyodide, and tests can feed it byte by byte.

Follows the WHATWG parsing rules: lines end with CRLF, LF or CR (a CR at the end of one piece
and an LF at the start of the next are one line break); a leading BOM is dropped; `:` starts a
comment; `data:` lines accumulate with `\\n` between them; a blank line dispatches; an event with
no data is not dispatched; `event:` names the event (default `message`); `id:` (without NUL)
and `retry:` (digits only) are remembered.

One deliberate leniency: at the end of the stream (`close()`), an event whose lines are all
complete but that lacks the final blank line is still dispatched (the standard drops it).
Some servers omit that last blank line; an incomplete last *line* is always dropped, so a
stream cut mid-line never yields half a JSON document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE = 8 * 1024 * 1024


class SSEError(ValueError):
    """The stream cannot be parsed (a line longer than the parser's limit)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None  # the last event id seen so far (persists across events)
    retry: int | None = None  # the last `retry:` value seen, in milliseconds


class SSEParser:
    """Feed bytes with `feed`, get complete `SSEEvent`s; call `close` at the end of the body."""

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._buf = bytearray()
        self._max_line = max_line
        self._started = False  # BOM check done
        self._skip_lf = False  # the previous piece ended with CR: a leading LF is its partner
        self._data: list[str] = []
        self._has_data = False
        self._event = ""
        self._fields_pending = False  # lines of an undispatched event were seen
        self.last_id: str | None = None
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse another piece of the body; return the events it completed (often none)."""
        if not data:
            return []
        buf = self._buf
        buf += data
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(bytes(buf)):
                return []  # maybe a BOM, split: wait for more
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
            self._started = True
        if self._skip_lf and buf:
            if buf[0] == 0x0A:
                del buf[0]
            self._skip_lf = False
        events: list[SSEEvent] = []
        pos = 0
        n = len(buf)
        while pos < n:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == n:
                self._skip_lf = True  # CR at the end: an LF may follow in the next piece
            self._line(bytes(buf[pos : m.start()]), events)
            pos = m.end()
        if pos:
            del buf[:pos]
        if len(buf) > self._max_line:
            raise SSEError(f"an SSE line is longer than {self._max_line} bytes")
        return events

    def close(self) -> list[SSEEvent]:
        """The body ended: return a last event that lacked its blank line (see module doc)."""
        self._buf.clear()  # an unterminated last line is incomplete: drop it
        events: list[SSEEvent] = []
        if self._fields_pending:
            self._dispatch(events)
        return events

    # -- internals -----------------------------------------------------------------------

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            self._dispatch(events)
            return
        if raw[0] == 0x3A:  # ":" comment (keep-alives)
            return
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._fields_pending = True
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._has_data:
            events.append(
                SSEEvent(
                    data="\n".join(self._data),
                    event=self._event or "message",
                    id=self.last_id,
                    retry=self.retry,
                )
            )
        self._data = []
        self._has_data = False
        self._event = ""
        self._fields_pending = False
