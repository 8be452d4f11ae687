"""schemas/line_validation.py: every code, located by line number and param; fast path == full check."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from schemas.jsonl import RawLine
from schemas.line_validation import LINE_ERROR_CODES, LineIssue, LineValidator, ValidLine


def good(i: int = 1, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}}


def raw(obj: Any, number: int = 1) -> RawLine:
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return RawLine(number, 0, len(data) + 1, data)


def check(obj: Any, *, endpoint: str | None = None, model: str | None = "m", number: int = 7) -> Any:
    return LineValidator(endpoint=endpoint, model=model).validate(raw(obj, number))


CASES: list[tuple[str, Any, str, str | None]] = [
    ("not json", b"{not json", "invalid_json", None),
    ("truncated json", b'{"custom_id": "a"', "invalid_json", None),
    ("invalid utf-8", b'{"custom_id": "\xff\xfe"}', "invalid_utf8", None),
    ("array", b"[1, 2]", "invalid_json", None),
    ("string", b'"hello"', "invalid_json", None),
    ("number", b"42", "invalid_json", None),
    ("no custom_id", {k: v for k, v in good().items() if k != "custom_id"}, "missing_custom_id", "custom_id"),
    ("empty custom_id", {**good(), "custom_id": ""}, "missing_custom_id", "custom_id"),
    ("numeric custom_id", {**good(), "custom_id": 5}, "invalid_custom_id", "custom_id"),
    ("GET", {**good(), "method": "GET"}, "invalid_method", "method"),
    ("lowercase post", {**good(), "method": "post"}, "invalid_method", "method"),
    ("no method", {k: v for k, v in good().items() if k != "method"}, "invalid_method", "method"),
    ("no url", {k: v for k, v in good().items() if k != "url"}, "missing_url", "url"),
    ("numeric url", {**good(), "url": 3}, "missing_url", "url"),
    ("unknown url", {**good(), "url": "/v1/images"}, "unsupported_url", "url"),
    ("body array", {**good(), "body": []}, "invalid_body", "body"),
    ("no body", {k: v for k, v in good().items() if k != "body"}, "invalid_body", "body"),
    ("no model", {**good(), "body": {"messages": [{"role": "user", "content": "x"}]}}, "missing_model",
     "body.model"),
    ("numeric model", good(model=3), "missing_model", "body.model"),
    ("other model", good(model="other"), "mismatched_model", "body.model"),
    ("no messages", {**good(), "body": {"model": "m"}}, "invalid_body", "body.messages"),
    ("empty messages", good(messages=[]), "invalid_body", "body.messages"),
    ("messages string", good(messages="hi"), "invalid_body", "body.messages"),
    ("stream", good(stream=True), "invalid_body", "body.stream"),
    ("extra field", {**good(), "extra": 1}, "invalid_json", "extra"),
]


@pytest.mark.parametrize(("name", "line", "code", "param"), CASES, ids=[c[0] for c in CASES])
def test_each_problem_gets_its_code_param_and_line(name: str, line: Any, code: str,
                                                   param: str | None) -> None:
    result = check(line)
    assert isinstance(result, LineIssue), name
    assert (result.code, result.param, result.number) == (code, param, 7)
    assert "line 7" in result.message
    assert code in LINE_ERROR_CODES


def test_a_good_line_passes_with_its_fields() -> None:
    result = check(good(3))
    assert isinstance(result, ValidLine)
    assert (result.number, result.custom_id, result.url) == (7, "r3", "/v1/chat/completions")
    assert result.body["model"] == "m"


@pytest.mark.parametrize("data", [b"", b"   ", b"\t"])
def test_blank_lines_are_skipped(data: bytes) -> None:
    assert check(data) is None


def test_oversize_line() -> None:
    result = LineValidator(max_line_bytes=10).validate(RawLine(4, 100, 200, b"", True))
    assert isinstance(result, LineIssue)
    assert (result.code, result.number, result.start, result.end) == ("line_too_large", 4, 100, 200)


def test_duplicate_names_the_first_line_and_is_reported_each_time() -> None:
    v = LineValidator(model="m")
    assert isinstance(v.validate(raw(good(1), 1)), ValidLine)
    for n in (2, 3):
        dup = v.validate(raw(good(1), n))
        assert isinstance(dup, LineIssue)
        assert (dup.code, dup.custom_id, dup.number) == ("duplicate_custom_id", "r1", n)
        assert "line 1" in dup.message


def test_a_bad_line_still_claims_its_custom_id() -> None:
    # Otherwise a later line with the same id would run, and the id would appear twice.
    v = LineValidator(model="m")
    first = v.validate(raw({**good(1), "method": "GET"}, 1))
    assert isinstance(first, LineIssue) and first.code == "invalid_method"
    second = v.validate(raw(good(1), 2))
    assert isinstance(second, LineIssue) and second.code == "duplicate_custom_id"


def test_endpoint_holds_every_line_to_it() -> None:
    result = check({**good(), "url": "/v1/completions", "body": {"model": "m", "prompt": "x"}},
                   endpoint="/v1/chat/completions")
    assert isinstance(result, LineIssue) and (result.code, result.param) == ("mismatched_url", "url")
    assert isinstance(check(good(), endpoint="/v1/chat/completions"), ValidLine)


def test_without_a_model_the_first_valid_line_sets_it() -> None:
    v = LineValidator()
    assert isinstance(v.validate(raw(good(1, model="a"), 1)), ValidLine)
    other = v.validate(raw(good(2, model="b"), 2))
    assert isinstance(other, LineIssue) and other.code == "mismatched_model"


@pytest.mark.parametrize(("url", "field", "value"), [
    ("/v1/completions", "prompt", "hello"),
    ("/v1/completions", "prompt", ["a", "b"]),
    ("/v1/embeddings", "input", "hello"),
    ("/v1/embeddings", "input", ["a"]),
    ("/v1/chat/ds-test", "messages", [{"role": "user", "content": "x"}]),
])
def test_each_endpoint_needs_its_own_body_field(url: str, field: str, value: Any) -> None:
    line = {"custom_id": "a", "method": "POST", "url": url, "body": {"model": "m", field: value}}
    assert isinstance(check(line), ValidLine)
    missing = check({**line, "body": {"model": "m"}})
    assert isinstance(missing, LineIssue)
    assert (missing.code, missing.param) == ("invalid_body", f"body.{field}")


def _mutations(rng: random.Random, i: int) -> Any:
    line = good(i)
    roll = rng.randrange(12)
    if roll == 0:
        line["custom_id"] = rng.choice([None, "", 1, ["x"], f"r{rng.randrange(i + 1)}"])
    elif roll == 1:
        line["method"] = rng.choice(["GET", None, "post"])
    elif roll == 2:
        line["url"] = rng.choice(["/v1/completions", "/v1/embeddings", "/nope", 5, None])
    elif roll == 3:
        line["body"] = rng.choice([None, [], "x", {"model": "m"}])
    elif roll == 4:
        line["body"]["model"] = rng.choice(["other", None, 3, ""])
    elif roll == 5:
        line["body"]["stream"] = rng.choice([True, False, 1, 0])
    elif roll == 6:
        line["body"]["messages"] = rng.choice([[], "x", None, [{}]])
    elif roll == 7:
        line[rng.choice(["extra", "custom_id"])] = "z"
    elif roll == 8:
        del line[rng.choice(["custom_id", "method", "url", "body"])]
    return line


@pytest.mark.parametrize("spill_at", [50, 1 << 17])
@pytest.mark.parametrize("endpoint", [None, "/v1/chat/completions"])
def test_the_fast_path_answers_exactly_as_the_full_check(endpoint: str | None, spill_at: int) -> None:
    rng = random.Random(5)
    fast, full = LineValidator(endpoint=endpoint, model="m"), LineValidator(endpoint=endpoint, model="m")
    fast.spill_at = full.spill_at = spill_at
    for i in range(3000):
        line = raw(_mutations(rng, i), i + 1)
        expected = full._check(line, orjson.loads(line.data))  # the full check alone
        assert fast.validate(copy.copy(line)) == expected, line.data


def test_duplicates_are_found_across_the_spill_into_the_compact_table() -> None:
    v = LineValidator(model="m")
    v.spill_at = 100
    for i in range(1, 1001):
        assert isinstance(v.validate(raw(good(i), i)), ValidLine)
    assert v._older is not None and len(v._older) >= 900
    for n, i in [(1001, 1), (1002, 555), (1003, 1000)]:
        dup = v.validate(raw(good(i), n))
        assert isinstance(dup, LineIssue) and dup.code == "duplicate_custom_id"
        assert f"already used on line {i}" in dup.message
    assert isinstance(v.validate(raw(good(5000), 1004)), ValidLine)


def test_id_table_agrees_with_a_dict() -> None:
    from schemas.line_validation import IdTable

    rng = random.Random(9)
    table, reference = IdTable(capacity=8), {}
    keys = [rng.getrandbits(64) - (1 << 63) for _ in range(5000)] + [0, 1, -1]
    for n, key in enumerate(keys, 1):
        if table.get(key) == 0 and (key or 1) not in reference:
            table.put(key, n)
            reference[key or 1] = n
    assert len(table) == len(reference)
    for key in keys:
        assert table.get(key) == reference[key or 1]
    assert all(table.get(rng.getrandbits(63)) == 0 for _ in range(1000))
