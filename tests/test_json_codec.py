"""The orjson envelope codec gives the standard codec's values and verdicts (json_orjson.py)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.rpc import frames
from tests.runtime_support import cpython_only, examples

pytestmark = cpython_only("orjson is a CPython extension")

STD_DUMPS, STD_PARSE = frames.standard_json()

# Everything an envelope may carry, and then some: lone surrogates, integers past 64 bits,
# non-finite floats, non-string keys (the standard codec turns them into strings).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec=None), max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner, max_size=5)
    ),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def fast() -> tuple[Any, Any]:
    from agent_core.rpc import json_orjson

    return json_orjson.codec()


def verdict(parse: Any, data: bytes) -> tuple[str, Any]:
    try:
        obj = parse(data)
    except ValueError:
        return ("refused", None)
    # NaN != NaN: compare through the standard text, which spells it out.
    return ("value", STD_DUMPS(obj))


@settings(max_examples=examples(400), deadline=None)
@given(obj=values)
def test_encodes_what_the_standard_codec_reads_back_the_same(fast, obj: Any) -> None:
    dumps, _parse = fast
    assert STD_PARSE(dumps(obj)) == STD_PARSE(STD_DUMPS(obj))


@settings(max_examples=examples(400), deadline=None)
@given(obj=values)
def test_parses_what_the_standard_codec_wrote(fast, obj: Any) -> None:
    _dumps, parse = fast
    text = STD_DUMPS(obj)
    assert verdict(parse, text) == verdict(STD_PARSE, text)


@settings(max_examples=examples(600), deadline=None)
@given(
    obj=values,
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
)
def test_same_verdict_on_damaged_input(fast, obj: Any, cuts: list[tuple[int, int]]) -> None:
    _dumps, parse = fast
    data = bytearray(STD_DUMPS({"id": 1, "v": obj}))
    for pos, byte in cuts:
        data[pos % len(data)] = byte
    assert verdict(parse, bytes(data)) == verdict(STD_PARSE, bytes(data))


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=200))
def test_same_verdict_on_random_bytes(fast, data: bytes) -> None:
    _dumps, parse = fast
    assert verdict(parse, data) == verdict(STD_PARSE, data)


@pytest.mark.parametrize(
    "text",
    [
        b"NaN",
        b"[Infinity,-Infinity]",
        b'"\\ud800"',
        b"1" * 40,
        b"-9223372036854775809",
        b"18446744073709551616",
        b"[1e400,-1e400,1e-400]",
        b"-0.0",
        b'{"a":1,"a":2}',
        b'"\\u0000\\n\\/"',
        b'"\x01"',
        b" {} ",
        b"\xef\xbb\xbf{}",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_edge_cases_take_the_standard_verdict(fast, text: bytes) -> None:
    _dumps, parse = fast
    assert verdict(parse, text) == verdict(STD_PARSE, text)


def test_types_the_standard_codec_treats_its_own_way(fast) -> None:
    dumps, _parse = fast

    class Name(str):
        pass

    @dataclass
    class Point:
        x: int

    assert dumps({"k": Name("v")}) == STD_DUMPS({"k": Name("v")})
    with pytest.raises(TypeError):  # refused by both, as the standard codec refuses it
        dumps({"p": Point(1)})
    assert json.loads(dumps({"big": 2**80})) == {"big": 2**80}


def test_non_finite_floats_become_null(fast) -> None:
    """The one documented difference: `NaN` is not JSON (browsers refuse it); null is."""
    dumps, _parse = fast
    assert dumps([math.inf, math.nan]) == b"[null,null]"


def test_installed_on_cpython_and_used_by_envelopes() -> None:
    from agent_core.runtime import use_native_json

    assert use_native_json() is True
    try:
        assert frames.dumps is not STD_DUMPS
        env = {"id": 3, "ok": True, "result": {"content": "a\nb\u00e9\ud800"}}
        [frame] = frames.encode_envelope(env)
        assert frames.parse_envelope(frame) == env
        with pytest.raises(frames.FrameError):
            frames.parse_envelope(b"[1]")
    finally:
        frames.install_json(*frames.standard_json())
