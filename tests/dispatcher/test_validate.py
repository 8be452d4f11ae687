"""The validation pass's pure core: file-level errors, limits, and byte-range chunking."""

from __future__ import annotations

import io

import orjson

from schemas.jsonl import LineSplitter, iter_file_lines
from services.dispatcher.validate import ChunkCutter, InputCheck, InputLimits

LIMITS = InputLimits(max_bytes=10_000_000, max_requests=50_000, max_line_bytes=6 * 1024 * 1024)
CHAT = "/v1/chat/completions"


def line(cid: str, model: str = "null-model", **body: object) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": CHAT, "body": body})


def check(data: bytes, *, limits: InputLimits = LIMITS, chunk_lines: int = 3, chunk_max_bytes: int = 1 << 30,
          model: str | None = "null-model", feed_size: int = 7) -> InputCheck:
    c = InputCheck(endpoint=CHAT, model=model, limits=limits, chunk_lines=chunk_lines, chunk_max_bytes=chunk_max_bytes)
    splitter = LineSplitter(limits.max_line_bytes)
    # Small feeds: lines straddle reads, as they do on a network stream.
    for i in range(0, len(data), feed_size):
        part = data[i:i + feed_size]
        c.add_bytes(len(part))
        for raw in splitter.feed(part):
            c.add_line(raw)
    for raw in splitter.finish():
        c.add_line(raw)
    return c


def test_valid_file_is_cut_into_byte_ranges_that_cover_every_request() -> None:
    lines = [line(f"r{i}") for i in range(8)]
    data = b"\n".join(lines[:4]) + b"\n\n" + b"\n".join(lines[4:]) + b"\n\n"  # a blank line inside and at the end
    result = check(data).finish()
    assert result.ok and result.requests == 8 and result.model == "null-model"
    assert [(c.index, c.first_line, c.line_count) for c in result.chunks] == [(0, 1, 3), (1, 4, 3), (2, 8, 2)]
    # Ranges are contiguous from 0 and re-frame to exactly the same lines.
    assert result.chunks[0].start == 0
    for a, b in zip(result.chunks, result.chunks[1:], strict=False):
        assert a.end == b.start
    seen = []
    for c in result.chunks:
        for raw in iter_file_lines(io.BytesIO(data), start=c.start, end=c.end, first_number=c.first_line):
            if raw.data:
                seen.append((raw.number, orjson.loads(raw.data)["custom_id"]))
    assert seen == [(1, "r0"), (2, "r1"), (3, "r2"), (4, "r3"), (6, "r4"), (7, "r5"), (8, "r6"), (9, "r7")]


def test_chunks_close_on_bytes_as_well_as_lines() -> None:
    lines = [line(f"r{i}", pad="x" * 200) for i in range(5)]
    result = check(b"\n".join(lines), chunk_lines=1000, chunk_max_bytes=450).finish()
    assert [c.line_count for c in result.chunks] == [2, 2, 1]


def test_file_level_errors_are_located_and_invalid_body_is_not_fatal() -> None:
    data = b"\n".join([
        line("a"),
        b"{not json",
        line("a"),  # duplicate
        orjson.dumps({"custom_id": "b", "method": "GET", "url": CHAT, "body": {"model": "null-model"}}),
        line("c", model="other-model"),
        orjson.dumps({"custom_id": "d", "method": "POST", "url": CHAT, "body": {"model": "null-model"}}),  # no messages
    ])
    result = check(data).finish()
    assert not result.ok
    assert [(e["line"], e["code"]) for e in result.errors] == [
        (2, "invalid_json"), (3, "duplicate_custom_id"), (4, "invalid_method"), (5, "mismatched_model"),
    ]
    assert result.errors[2]["param"] == "method"
    assert not result.chunks


def test_invalid_body_lines_are_counted_and_chunked() -> None:
    bad = orjson.dumps({"custom_id": "d", "method": "POST", "url": CHAT, "body": {"model": "null-model"}})
    result = check(b"\n".join([line("a"), bad, line("c")])).finish()
    assert result.ok and result.requests == 3 and sum(c.line_count for c in result.chunks) == 3


def test_at_most_100_errors_are_reported_and_reading_stops() -> None:
    c = check(b"\n".join([b"nope"] * 500))
    result = c.finish()
    assert len(result.errors) == 100 and result.errors[-1]["line"] == 100


def test_request_and_byte_limits() -> None:
    limits = InputLimits(max_bytes=10_000, max_requests=3, max_line_bytes=1000, test_model=True)
    result = check(b"\n".join(line(f"r{i}") for i in range(5)), limits=limits).finish()
    assert [e["code"] for e in result.errors] == ["too_many_requests"]
    assert result.errors[0]["line"] == 4 and "batch-test-model" in result.errors[0]["message"]

    limits = InputLimits(max_bytes=300, max_requests=100, max_line_bytes=1000)
    result = check(b"\n".join(line(f"r{i}") for i in range(10)), limits=limits).finish()
    assert [e["code"] for e in result.errors] == ["file_too_large"]

    limits = InputLimits(max_bytes=100_000, max_requests=100, max_line_bytes=150)
    result = check(line("a") + b"\n" + line("b", pad="y" * 200), limits=limits).finish()
    assert [(e["code"], e["line"]) for e in result.errors] == [("line_too_large", 2)]


def test_empty_file_fails() -> None:
    result = check(b"\n\n  \n").finish()
    assert [e["code"] for e in result.errors] == ["empty_file"]


def test_model_is_adopted_from_the_first_line_when_unknown() -> None:
    result = check(line("a", model="m1") + b"\n" + line("b", model="m1"), model=None).finish()
    assert result.ok and result.model == "m1"


def test_cutter_drops_a_tail_of_blank_lines() -> None:
    cutter = ChunkCutter(max_lines=10, max_bytes=1 << 20)
    splitter = LineSplitter()
    raws = splitter.feed(b'{"a":1}\n\n\n') + splitter.finish()
    cutter.add(raws[0], counted=True)
    for raw in raws[1:]:
        cutter.add(raw, counted=False)
    chunks = cutter.finish()
    assert len(chunks) == 1 and chunks[0].end == raws[0].end + 2


def test_every_hop_of_an_input_url_is_checked_before_it_is_called() -> None:
    import pytest

    from services.dispatcher.validate import InputUnavailable, URLFetch, _check_target
    from services.http.url_guard import URLRefused

    policy = URLFetch().policy  # the default: public addresses only
    _check_target("https://example.com/in.jsonl", policy)
    for refused in ("ftp://example.com/in.jsonl", "http://169.254.169.254/latest", "http://10.0.0.1/x",
                    "http://[::1]:8080/x"):
        with pytest.raises(URLRefused) as info:
            _check_target(refused, policy)
        assert "169.254" not in str(info.value) and "10.0.0.1" not in str(info.value)
    with pytest.raises(InputUnavailable):
        _check_target("http://example.com:99999/x", policy)
