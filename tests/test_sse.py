"""The SSE parser: line endings, split input, multi-line data, comments, names, end of stream."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.llm.sse import SSEError, SSEEvent, SSEParser


def parse(*pieces: bytes) -> list[SSEEvent]:
    p = SSEParser()
    out: list[SSEEvent] = []
    for piece in pieces:
        out += p.feed(piece)
    return out + p.close()


def test_basic_events_names_and_defaults() -> None:
    evs = parse(b"data: hello\n\nevent: ping\ndata: {}\n\n")
    assert evs == [SSEEvent("hello"), SSEEvent("{}", event="ping")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    stream = eol.join([b"event: a", b"data: 1", b"data: 2", b"", b"data: 3", b"", b""])
    assert parse(stream) == [SSEEvent("1\n2", event="a"), SSEEvent("3")]


def test_crlf_split_between_pieces_is_one_line_break() -> None:
    # "\r" ends one piece and "\n" starts the next: one break, so no blank line in between.
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SSEEvent("a\nb")]
    # A lone CR at the end followed by more data is still a line break.
    assert parse(b"data: a\r", b"data: b\r\r") == [SSEEvent("a\nb")]


def test_comments_unknown_fields_and_space_rules() -> None:
    stream = b": keep-alive\nfoo: bar\ndata:nospace\ndata:  two spaces\ndata\n\n"
    assert parse(stream) == [SSEEvent("nospace\n two spaces\n")]


def test_event_without_data_is_not_dispatched_and_name_resets() -> None:
    assert parse(b"event: lonely\n\ndata: x\n\n") == [SSEEvent("x")]


def test_empty_data_line_dispatches_empty_string() -> None:
    assert parse(b"data:\n\n") == [SSEEvent("")]


def test_id_and_retry() -> None:
    evs = parse(b"id: 7\nretry: 1500\ndata: a\n\nretry: x\nid: bad\0id\ndata: b\n\n")
    assert [(e.id, e.retry) for e in evs] == [("7", 1500), ("7", 1500)]


def test_bom_is_dropped_even_when_split() -> None:
    assert parse(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [SSEEvent("x")]
    # Not a BOM: ordinary bytes are kept.
    assert parse(b"\xef\xbb") == []


def test_utf8_split_inside_a_character() -> None:
    raw = "data: héllo ✓\n\n".encode()
    cut = raw.index("✓".encode()) + 1
    assert parse(raw[:cut], raw[cut:]) == [SSEEvent("héllo ✓")]


def test_end_of_stream_lenient_for_missing_blank_line_but_drops_partial_line() -> None:
    assert parse(b"data: [DONE]\n") == [SSEEvent("[DONE]")]
    assert parse(b'data: {"a": 1}\n\ndata: {"trunc') == [SSEEvent('{"a": 1}')]


def test_line_limit() -> None:
    p = SSEParser(max_line=16)
    with pytest.raises(SSEError):
        p.feed(b"data: " + b"x" * 32)


_line = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"]),
    max_size=12,
)
_field = st.tuples(st.sampled_from(["data", "event", "id", ": comment", "retry"]), _line)
_events = st.lists(st.lists(_field, min_size=1, max_size=4), max_size=6)


@settings(max_examples=120, deadline=None)
@given(
    events=_events,
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_split_gives_the_same_events(
    events: list[list[tuple[str, str]]], eol: str, cuts: list[int]
) -> None:
    text = ""
    for fields in events:
        for name, value in fields:
            text += (name if name.startswith(":") else f"{name}: {value}") + eol
        text += eol
    raw = text.encode()
    whole = parse(raw)
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert parse(*pieces) == whole
    one_by_one = [raw[i : i + 1] for i in range(len(raw))]
    assert parse(*one_by_one) == whole
    # The data of each dispatched event is exactly the joined data lines.
    expected = [
        "\n".join(v for n, v in fields if n == "data")
        for fields in events
        if any(n == "data" for n, _ in fields)
    ]
    assert [e.data for e in whole] == expected
