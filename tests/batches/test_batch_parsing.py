"""Pure parsing: completion windows, list timestamps, URL inputs, the first-line model peek."""

from __future__ import annotations

import pytest

from schemas.batch_api import is_url_input, parse_completion_window, parse_create_time
from services.batches.peek import model_of_line


@pytest.mark.parametrize(("window", "hours"), [("24h", 24), ("1d", 24), ("25h", 25), ("7d", 168), ("336h", 336),
                                               ("14d", 336)])
def test_windows(window: str, hours: int) -> None:
    assert parse_completion_window(window) == hours


@pytest.mark.parametrize("window", ["23h", "337h", "15d", "0d", "24", "24hh", "-24h", "+24h", "1.5d", "24 h", "",
                                    "0024h", "1w"])
def test_bad_windows(window: str) -> None:
    with pytest.raises(ValueError, match="completion_window"):
        parse_completion_window(window)


def test_create_time() -> None:
    assert parse_create_time("19700101000000") == 0
    assert parse_create_time("20250102030405") == 1735787045
    for bad in ("2025010203040", "202501020304056", "2025-01-02T03", "20250229000000", "20251231240000"):
        with pytest.raises(ValueError):
            parse_create_time(bad)


def test_url_inputs() -> None:
    assert is_url_input("https://example.com/a.jsonl") and is_url_input("http://127.0.0.1:9000/x")
    assert not is_url_input("file-abc") and not is_url_input("ftp://host/x") and not is_url_input("https://")


@pytest.mark.parametrize(("line", "model"), [
    (b'{"custom_id":"a","body":{"model":"m1"}}', "m1"),
    (b'{"custom_id":"a","body":{"model":""}}', None),
    (b'{"custom_id":"a","body":{"model":7}}', None),
    (b'{"custom_id":"a","body":"x"}', None),
    (b'[1,2]', None),
    (b'{broken', None),
    (b'\xff\xfe', None),
    (None, None),
])
def test_model_of_line(line: bytes | None, model: str | None) -> None:
    assert model_of_line(line) == model
