"""The upload-time JSONL shape check, chunk by chunk (pure function tests)."""

from __future__ import annotations

import pytest

from services.files.jsonl_shape import JsonlShapeCheck


def check(data: bytes, chunk: int, *, max_line_bytes: int = 64, max_lines: int = 10) -> tuple[int, str] | None:
    c = JsonlShapeCheck(max_line_bytes=max_line_bytes, max_lines=max_lines)
    for i in range(0, len(data), chunk):
        c.feed(data[i : i + chunk])
    err = c.finish()
    return None if err is None else (err.line, err.code)


@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 20])
def test_chunk_boundaries_do_not_matter(chunk: int) -> None:
    good = b'\xef\xbb\xbf{"a": 1}\r\n\n  \n{"b": [1, 2]}\n{"c": "\xc3\xa9"}'
    assert check(good, chunk) is None
    assert check(good + b"\n[1]\n", chunk) == (6, "invalid_json")
    assert check(b'{"a": 1}\n{"b": "\xc3"}\n', chunk) == (2, "invalid_utf8")
    assert check(b'{"a": 1}\n{"a": "' + b"x" * 100 + b'"}\n{"ok": 1}\n', chunk) == (2, "line_too_large")


def test_line_limit_is_inclusive() -> None:
    line = b'{"a": "' + b"x" * (64 - 9) + b'"}'
    assert len(line) == 64
    assert check(line + b"\n", 5) is None
    assert check(line + b"\r\n", 5) is None  # the CR is not content
    assert check(line[:-2] + b'x"}\n', 5) == (1, "line_too_large")


def test_count_limit_counts_non_blank_lines() -> None:
    ten = b'{"a": 1}\n\n' * 10
    assert check(ten, 3) is None
    assert check(ten + b'{"a": 1}', 3) == (21, "too_many_lines")


def test_empty_and_blank_files_are_refused() -> None:
    assert check(b"", 1) == (0, "empty_file")
    assert check(b"\n \n\r\n", 1) == (0, "empty_file")


def test_first_error_wins_and_checking_stops() -> None:
    c = JsonlShapeCheck(max_line_bytes=64, max_lines=10)
    first = c.feed(b'1\n{"a":\n')
    assert first is not None and first.line == 1
    assert c.feed(b"[[[\n") is first
    assert c.finish() is first
