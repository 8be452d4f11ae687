"""A corpus of bad lines: each gets its own located error (code + line number), nothing crashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.jsonl import BOM
from tests.support.run_batch import chat_line, cli, read_results, run_in_process

SKIP = "skip"  # a blank line: counted in line numbers, no result


def corpus() -> list[tuple[bytes, str | None]]:
    """(raw line without its newline, expected error code or None for success, or SKIP)."""
    def j(obj: Any) -> bytes:
        return orjson.dumps(obj)

    good = chat_line
    no_body_model = {**good(90), "body": {"messages": [{"role": "user", "content": "x"}]}}
    return [
        (BOM + j(good(1)), None),  # a BOM before the first line is accepted
        (j(good(2)) + b"\r", None),  # CRLF ending
        (b"", SKIP),
        (b"   \t", SKIP),
        (b'{"custom_id": "x", "method": "POST",', "invalid_json"),
        (b"{'custom_id': 'single quotes'}", "invalid_json"),
        (b'{"custom_id": "bad-\xff\xfe-bytes", "method": "POST"}', "invalid_utf8"),
        (b"[1, 2, 3]", "invalid_json"),
        (b"null", "invalid_json"),
        (b'"just a string"', "invalid_json"),
        (j({k: v for k, v in good(3).items() if k != "custom_id"}), "missing_custom_id"),
        (j({**good(4), "custom_id": 4}), "invalid_custom_id"),
        (j({**good(5), "method": "GET"}), "invalid_method"),
        (j({k: v for k, v in good(6).items() if k != "method"}), "invalid_method"),
        (j({**good(7), "url": "/v1/images/generations"}), "unsupported_url"),
        (j({k: v for k, v in good(8).items() if k != "url"}), "missing_url"),
        (j({**good(9), "body": ["not", "an", "object"]}), "invalid_body"),
        (j({**good(10), "body": "text"}), "invalid_body"),
        (j(no_body_model), None),  # --model fills a missing body.model, as FastDeploy does
        (j({**good(91), "body": {**good(91)["body"], "model": ""}}), "missing_model"),
        (j(good(11, model="gpt-4o")), "mismatched_model"),
        (j({**good(12), "body": {**good(12)["body"], "messages": "hello"}}), "invalid_body"),
        (j({**good(13), "body": {**good(13)["body"], "messages": []}}), "invalid_body"),
        (j({**good(14), "body": {**good(14)["body"], "stream": True}}), "invalid_body"),
        (j({**good(15), "extra": "field"}), "invalid_json"),
        (j({"custom_id": "big", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "batch-test-model",
                     "messages": [{"role": "user", "content": "x" * (7 << 20)}]}}),
         "line_too_large"),
        (j(good(1)), "duplicate_custom_id"),
        (j(good(16)), None),
        (j(good(16)), "duplicate_custom_id"),
        (j(good(17, url="/v1/chat/ds-test")), None),
        (j({"custom_id": "c", "method": "POST", "url": "/v1/completions",
            "body": {"model": "batch-test-model", "prompt": "x"}}), "unsupported_endpoint"),
        (j(good(18)), None),  # the last line, without a newline at the end of the file
    ]


def write_corpus(path: Path) -> list[tuple[int, str | None]]:
    rows = corpus()
    path.write_bytes(b"\n".join(raw for raw, _ in rows))
    return [(n, code) for n, (_, code) in enumerate(rows, 1) if code != SKIP]


def check_results(expected: list[tuple[int, str | None]], *paths: Path) -> None:
    got = sorted((int(r.id.rpartition("_")[2]), r.error.code if r.error else None,
                  r.error.line if r.error else None)
                  for r in read_results(*paths))
    assert [(n, c) for n, c, _ in got] == expected
    for n, code, line in got:
        if code is not None:
            assert line == n  # the error names its input line


def test_bad_input_corpus_through_the_real_command(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    expected = write_corpus(src)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    proc = cli("-i", str(src), "-o", str(out), "--error-file", str(err), "--model", "batch-test-model")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    check_results(expected, out, err)
    assert all(r.error is None for r in read_results(out))
    failures = sum(1 for _, code in expected if code)
    assert f"{len(expected) - failures} succeeded · {failures} failed" in proc.stderr
    # Every error message says which line it is about.
    for r in read_results(err):
        assert r.error is not None and f"line {r.error.line}" in r.error.message


async def test_bad_input_corpus_with_an_endpoint_in_one_file(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    expected = write_corpus(src)
    # With --endpoint, a known-but-different url is mismatched_url rather than unsupported.
    expected = [(n, "mismatched_url" if code in ("unsupported_url", "unsupported_endpoint") else code)
                for n, code in expected]
    ds_test_line = next(n for n, (raw, _) in enumerate(corpus(), 1) if b"ds-test" in raw)
    expected = [(n, "mismatched_url" if n == ds_test_line else code) for n, code in expected]
    out = tmp_path / "out.jsonl"
    rc, text = await run_in_process(input=src, output=out, endpoint="/v1/chat/completions")
    assert rc == 1, text
    check_results(expected, out)


@pytest.mark.parametrize("junk", [b"\x00\x01\x02" * 1000, bytes(range(256)) * 50, b"\n" * 5000,
                                  b"\xef\xbb\xbf"])
async def test_binary_junk_never_crashes_a_run(tmp_path: Path, junk: bytes) -> None:
    src = tmp_path / "junk.jsonl"
    src.write_bytes(junk)
    out = tmp_path / "out.jsonl"
    rc, text = await run_in_process(input=src, output=out, max_line_bytes=1000)
    assert rc in (0, 1), text
    assert "Traceback" not in text
    results = read_results(out)
    assert all(r.error is not None for r in results)
