"""schemas/jsonl.py: the stream splitter and the file reader frame every file the same way."""

from __future__ import annotations

import io
import os
import random

import pytest

from schemas.jsonl import BOM, LineSplitter, RawLine, iter_file_lines


def split_stream(data: bytes, chunk_sizes: list[int], max_line_bytes: int, **kw: int) -> list[RawLine]:
    splitter = LineSplitter(max_line_bytes, **kw)
    out: list[RawLine] = []
    pos = 0
    for size in chunk_sizes:
        out += splitter.feed(data[pos : pos + size])
        pos += size
    out += splitter.feed(data[pos:])
    return out + splitter.finish()


def random_chunks(rng: random.Random, total: int) -> list[int]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(rng.choice([1, 2, 3, 7, 64, 1000, rng.randint(1, 5000)]))
    return sizes


def random_file(rng: random.Random, max_line_bytes: int) -> bytes:
    parts = [BOM] if rng.random() < 0.5 else []
    for i in range(rng.randint(0, 60)):
        kind = rng.random()
        if kind < 0.1:
            content = b""
        elif kind < 0.2:
            content = b"x" * rng.randint(max_line_bytes - 2, max_line_bytes + 3)  # around the limit
        elif kind < 0.25:
            content = b"y" * rng.randint(max_line_bytes * 2, max_line_bytes * 5)  # oversize
        else:
            content = b'{"custom_id":"%d","v":"%s"}' % (i, b"z" * rng.randint(0, 80))
        ending = rng.choice([b"\n", b"\r\n", b"\n", b"\r\n\n"])
        parts.append(content + ending)
    if rng.random() < 0.5 and parts:
        parts[-1] = parts[-1].rstrip(b"\r\n")  # no newline at the end of the file
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(40))
def test_splitter_and_file_reader_agree_on_random_chunkings(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.choice([16, 100, 300])
    data = random_file(rng, limit)
    from_file = list(iter_file_lines(io.BytesIO(data), limit, block_size=rng.choice([1, 5, 64, 4096])))
    from_stream = split_stream(data, random_chunks(rng, len(data)), limit)
    assert from_stream == from_file
    # The ranges tile the file exactly, and each line's content is what its range holds.
    assert [r.number for r in from_file] == list(range(1, len(from_file) + 1))
    pos = 0
    for r in from_file:
        assert r.start == pos
        raw = data[r.start : r.end]
        content = raw.removesuffix(b"\n").removesuffix(b"\r")
        if r.start == 0:
            content = content.removeprefix(BOM)
        if r.oversize:
            assert r.data == b"" and len(content) > limit
        else:
            assert r.data == content and len(content) <= limit
        pos = r.end
    assert pos == len(data)


def test_crlf_bom_and_missing_final_newline() -> None:
    data = BOM + b'{"a":1}\r\n\r\n{"b":2}'
    lines = list(iter_file_lines(io.BytesIO(data)))
    assert [(r.number, r.start, r.end, r.data) for r in lines] == [
        (1, 0, 12, b'{"a":1}'), (2, 12, 14, b""), (3, 14, 21, b'{"b":2}'),
    ]


def test_a_bom_only_counts_at_the_start_of_the_file() -> None:
    data = b"{}\n" + BOM + b"{}\n"
    assert [r.data for r in iter_file_lines(io.BytesIO(data))] == [b"{}", BOM + b"{}"]


def test_crlf_line_of_exactly_the_limit_passes_and_one_more_byte_does_not() -> None:
    data = b"a" * 10 + b"\r\n" + b"b" * 11 + b"\r\n"
    for lines in (list(iter_file_lines(io.BytesIO(data), 10)), split_stream(data, [3] * 10, 10)):
        assert [(r.oversize, r.data) for r in lines] == [(False, b"a" * 10), (True, b"")]


def test_oversize_line_is_never_held(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.write(b"{}\n" + b"x" * (7 * 1024 * 1024) + b"\n{}\n")
    with open(path, "rb") as f:
        lines = list(iter_file_lines(f))
    assert [(r.number, r.oversize, r.data) for r in lines] == [
        (1, False, b"{}"), (2, True, b""), (3, False, b"{}"),
    ]
    assert lines[1].end - lines[1].start == 7 * 1024 * 1024 + 1


def test_byte_range_reading_continues_numbering() -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(10))
    whole = list(iter_file_lines(io.BytesIO(data)))
    middle = list(iter_file_lines(io.BytesIO(data), start=whole[3].start, end=whole[7].start, first_number=4))
    assert middle == whole[3:7]
    splitter = LineSplitter(start=whole[3].start, first_number=4)
    assert splitter.feed(data[whole[3].start : whole[7].start]) == whole[3:7]


def test_reads_a_pipe_from_where_it_is() -> None:
    r, w = os.pipe()
    os.write(w, b'{"a":1}\n{"b":2}\n')
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert [x.data for x in iter_file_lines(f)] == [b'{"a":1}', b'{"b":2}']
