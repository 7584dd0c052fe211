"""apply_patch: the `*** Begin Patch` parser and the hunk applier (pure, no bridge)."""

from __future__ import annotations

import pytest

from agent_core.agent.patch import PatchError, apply_chunks, parse_patch, seek


def wrap(body: str) -> str:
    return f"*** Begin Patch\n{body}\n*** End Patch"


def apply(content: str, body: str) -> str:
    (op,) = parse_patch(wrap(body))
    return apply_chunks(op.path, content, op.chunks)


def test_parse_all_operations() -> None:
    ops = parse_patch(
        wrap(
            "*** Add File: a/new.txt\n+one\n+two\n"
            "*** Update File: src/app.py\n*** Move to: src/main.py\n@@ def greet():\n"
            '-    print("Hi")\n+    print("Hello")\n'
            "*** Delete File: old.txt"
        )
    )
    assert [(o.kind, o.path) for o in ops] == [
        ("add", "a/new.txt"),
        ("update", "src/app.py"),
        ("delete", "old.txt"),
    ]
    assert ops[0].contents == "one\ntwo\n"
    assert ops[1].move_to == "src/main.py"
    (chunk,) = ops[1].chunks
    assert chunk.context == "def greet():"
    assert chunk.old_lines == ['    print("Hi")'] and chunk.new_lines == ['    print("Hello")']


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("*** Add File: x\n+y\n*** End Patch", "first line"),
        ("*** Begin Patch\n*** Add File: x\n+y", "last line"),
        (wrap("*** Add File: x\ny"), "starts with '+'"),
        (wrap("*** Frobnicate: x"), "expected '*** Add File:'"),
        (wrap("*** Update File: x"), "no changes"),
        (wrap("*** Update File: x\n@@\n?bad"), "starts with ' ', '-' or '+'"),
        (wrap(""), "no file operations"),
        (wrap("*** Add File: "), "missing file path"),
    ],
)
def test_parse_errors_say_where(text: str, needle: str) -> None:
    with pytest.raises(PatchError) as exc:
        parse_patch(text)
    assert needle in str(exc.value)


def test_heredoc_wrapper_and_crlf_patch_are_accepted() -> None:
    text = "<<'EOF'\r\n*** Begin Patch\r\n*** Add File: x\r\n+y\r\n*** End Patch\r\nEOF\r\n"
    (op,) = parse_patch(text)
    assert op.contents == "y\n"


def test_update_with_context_header_picks_the_right_occurrence() -> None:
    content = "def a():\n    return 1\n\ndef b():\n    return 1\n"
    out = apply(content, "*** Update File: m.py\n@@ def b():\n-    return 1\n+    return 2")
    assert out == "def a():\n    return 1\n\ndef b():\n    return 2\n"


def test_first_hunk_may_omit_the_at_line_and_several_hunks_apply_in_order() -> None:
    content = "".join(f"line {i}\n" for i in range(1, 11))
    out = apply(
        content,
        "*** Update File: f\n line 1\n-line 2\n+LINE 2\n@@\n line 8\n-line 9\n+LINE 9\n+extra",
    )
    assert out.splitlines() == [
        "line 1",
        "LINE 2",
        *[f"line {i}" for i in range(3, 9)],
        "LINE 9",
        "extra",
        "line 10",
    ]


def test_whitespace_and_typographic_punctuation_are_tolerated() -> None:
    content = "x = 1   \n    say(\u201chello\u201d)\n"
    out = apply(content, '*** Update File: f\n-x = 1\n+x = 2\n-say("hello")\n+say("bye")')
    assert out == 'x = 2\nsay("bye")\n'


def test_end_of_file_anchor_prefers_the_last_occurrence() -> None:
    content = "end\nmiddle\nend\n"
    out = apply(content, "*** Update File: f\n@@\n-end\n+END\n*** End of File")
    assert out == "end\nmiddle\nEND\n"


def test_pure_insertion_after_context_or_at_end() -> None:
    content = "import os\n\ndef main():\n    pass\n"
    out = apply(content, "*** Update File: f\n@@ import os\n+import sys")
    assert out == "import os\nimport sys\n\ndef main():\n    pass\n"
    out = apply("a\n", "*** Update File: f\n@@\n+b")
    assert out == "a\nb\n"


def test_crlf_file_keeps_crlf_and_final_newline_is_added() -> None:
    out = apply("a\r\nb\r\nc\r\n", "*** Update File: f\n a\n-b\n+B")
    assert out == "a\r\nB\r\nc\r\n"
    assert apply("a\nb", "*** Update File: f\n-b\n+c") == "a\nc\n"


def test_missing_lines_fail_with_the_lines_shown() -> None:
    with pytest.raises(PatchError) as exc:
        apply("a\nb\n", "*** Update File: f.py\n-nope\n+x")
    assert "f.py: hunk 1" in str(exc.value) and "nope" in str(exc.value)
    with pytest.raises(PatchError, match="context line not found"):
        apply("a\nb\n", "*** Update File: f.py\n@@ def zzz\n-a\n+x")


def test_seek_order_of_tolerance() -> None:
    lines = ["  foo  ", "foo"]
    assert seek(lines, ["foo"], 0, False) == 1  # exact beats stripped
    assert seek(lines, ["  foo"], 0, False) == 0  # rstrip match
    assert seek(lines, ["bar"], 0, False) is None
    assert seek(lines, [], 1, False) == 1
