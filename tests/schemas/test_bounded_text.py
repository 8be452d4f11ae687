"""Whatever a line or a request holds, the text that quotes it stays small, and the Batch object
stays under its size bound."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from schemas.batch_api import CreateBatchRequest, url_problem
from schemas.jsonl import RawLine
from schemas.line_validation import LineIssue, LineValidator
from schemas.openai_objects import BATCH_OBJECT_MAX_BYTES, MAX_BATCH_ERRORS
from schemas.text import DEFAULT_QUOTE_CHARS
from services.state.batches import new_batch_document, to_api

BIG = 5_000_000
CHAT = "/v1/chat/completions"


def _issue(line: dict[str, Any], validator: LineValidator | None = None) -> LineIssue:
    data = orjson.dumps(line)
    item = (validator or LineValidator(endpoint=CHAT)).validate(RawLine(1, 0, len(data), data))
    assert isinstance(item, LineIssue), item
    return item


def _good(custom_id: str = "a", **over: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, **over}


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (_good(method="G" * BIG), "invalid_method"),
        (_good(url="/" + "u" * BIG), "mismatched_url"),
        (_good(body={"model": "m" * BIG, "messages": [1]}), "mismatched_model"),
        ({**_good(), "a" * BIG: 1, **{f"extra{i}": i for i in range(50)}}, "invalid_json"),
    ],
)
def test_huge_strings_in_a_line_are_quoted_cut(line: dict[str, Any], code: str) -> None:
    validator = LineValidator(endpoint=CHAT, model="m")
    issue = _issue(line, validator)
    assert issue.code == code
    assert len(issue.message) < 3 * DEFAULT_QUOTE_CHARS + 200
    assert f"[cut: {BIG + (1 if code == 'mismatched_url' else 0)} characters]" in issue.message
    assert issue.param is None or len(issue.param) < DEFAULT_QUOTE_CHARS + 50


def test_duplicate_custom_id_and_containers_are_bounded() -> None:
    validator = LineValidator(endpoint=CHAT)
    huge_id = "c" * BIG
    assert not isinstance(validator.validate(RawLine(1, 0, 1, orjson.dumps(_good(huge_id)))), LineIssue)
    dup = _issue(_good(huge_id), validator)
    assert dup.code == "duplicate_custom_id" and len(dup.message) < 500 and "already used on line 1" in dup.message
    # A method that is a huge object is named by its type, not printed.
    method = _issue(_good(method={"k": "v" * BIG}), LineValidator(endpoint=CHAT))
    assert method.code == "invalid_method" and "a JSON object" in method.message and len(method.message) < 200


def test_the_quote_limit_is_a_parameter() -> None:
    issue = _issue(_good(method="G" * 1000), LineValidator(endpoint=CHAT, quote_chars=10))
    assert "'GGGGGGGGGG…[cut: 1000 characters]'" in issue.message


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.com/a.jsonl", True),
        ("http://example.com:8080/x", True),
        ("http://example.com:99999/", False),
        ("http://example.com:0/", False),
        ("http://example.com:port/", False),
        ("http:///path", False),
        ("http://[::1/x", False),
        ("ftp://example.com/x", False),
        ("http://exa mple.com/x", False),
        ("http://example.com/\x00", False),
        ("https://example.com/" + "p" * 3000, False),
    ],
)
def test_url_problem(url: str, ok: bool) -> None:
    problem = url_problem(url)
    assert (problem is None) == ok, problem
    if problem is not None:
        assert "example.com" not in problem and "99999" not in problem


def test_metadata_control_characters_are_refused() -> None:
    base = {"input_file_id": "file-x", "endpoint": CHAT, "completion_window": "24h"}
    CreateBatchRequest.model_validate({**base, "metadata": {"k": "tab\tnewline\ncr\r"}})
    for metadata in ({"k": "a\x00b"}, {"k\x1b": "v"}):
        with pytest.raises(ValueError, match="control character"):
            CreateBatchRequest.model_validate({**base, "metadata": metadata})


def worst_case_document() -> dict[str, Any]:
    """A batch with everything a client controls at its largest: 16 metadata pairs of 64-character keys
    and 512-character values, all 4-byte characters; a 2048-character URL input; a 5 MB model name;
    more errors than the cap, each quoting megabytes."""
    astral = "\U0001f600"
    metadata = {f"{i:02d}" + astral * 62: astral * 512 for i in range(16)}
    url = "https://example.com/" + astral * (2048 - len("https://example.com/"))
    CreateBatchRequest.model_validate({"input_file_id": url, "endpoint": CHAT, "completion_window": "24h",
                                       "metadata": metadata})  # the API accepts all of it
    doc = new_batch_document(project="p", endpoint=CHAT, input_file_id=url, input={"kind": "url", "url": url},
                             completion_window="24h", expires_in_s=3600, metadata=metadata, model="m" * BIG)
    doc["status"] = "failed"
    doc["failed_at"] = time.time()
    doc["errors"] = [{"code": "c" * 10_000, "message": astral * 100_000, "param": "p" * 10_000, "line": i}
                     for i in range(MAX_BATCH_ERRORS + 50)]
    return doc


def test_the_batch_object_stays_under_its_bound() -> None:
    obj = to_api(worst_case_document())
    size = len(orjson.dumps(obj))
    assert size < BATCH_OBJECT_MAX_BYTES, size
    assert 0 < len(obj["errors"]["data"]) <= MAX_BATCH_ERRORS
    assert obj["model"].endswith(f"[cut: {BIG} characters]")
    # With little else in the object, the dispatcher's 100 errors about megabyte lines all fit.
    plain = worst_case_document()
    plain["metadata"], plain["input_file_id"] = None, "file-abc"
    issue = _issue(_good(method="G" * BIG))
    plain["errors"] = [{"code": issue.code, "message": issue.message, "param": issue.param, "line": i}
                       for i in range(MAX_BATCH_ERRORS * 3)]
    obj = to_api(plain)
    assert len(obj["errors"]["data"]) == MAX_BATCH_ERRORS and len(orjson.dumps(obj)) < BATCH_OBJECT_MAX_BYTES
