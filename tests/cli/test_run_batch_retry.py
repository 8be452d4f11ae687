"""`--retry-failed`: only the lines whose failure was transient run again, against a real upstream
server (tests/support/flaky_upstream.py) that answers 503 to some lines until it recovers and 400 to
others for good; afterwards every custom id is in the files exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.cli.run_batch.resume import is_retriable
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.models import GATED, write_models_file
from tests.support.run_batch import (
    acli,
    chat_line,
    custom_id_counts,
    line_number,
    read_result_objects,
    run_in_process,
    write_lines,
)

IDS = [f"request-{i}" for i in range(8)]
TRANSIENT = {"request-2", "request-5"}
REFUSED = {"request-6"}


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[FlakyUpstream]:
    server = await FlakyUpstream(failing=TRANSIENT, refused=REFUSED).start()
    try:
        yield server
    finally:
        await server.stop()


def _input(tmp_path: Path) -> Path:
    # The custom id is the message: the server tells the lines apart by it.
    return write_lines(tmp_path / "in.jsonl", [chat_line(i, model=GATED, content=f"request-{i}") for i in range(8)])


async def _run(tmp_path: Path, upstream: FlakyUpstream, **kw: object) -> tuple[int, str]:
    models = write_models_file(tmp_path / "models.toml", upstream.url)
    return await run_in_process(input=_input(tmp_path), model=GATED, models_file=models, **kw)


def _errors(path: Path) -> dict[str, tuple[str, int | None]]:
    return {o["custom_id"]: (o["error"]["code"], (o["response"] or {}).get("status_code"))
            for o in read_result_objects(path) if o["error"] is not None}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _in_input_order(path: Path) -> bool:
    numbers = [line_number(o) for o in read_result_objects(path)]
    return numbers == sorted(numbers)


async def test_retry_failed_reruns_only_the_transient_failures(tmp_path: Path, upstream: FlakyUpstream) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    rc, _ = await _run(tmp_path, upstream, output=out, error_file=err)
    assert rc == 1
    assert _errors(err) == {"request-2": ("overloaded", 503), "request-5": ("overloaded", 503),
                            "request-6": ("invalid_request", 400)}
    ids_before = {o["custom_id"]: o["id"] for o in read_result_objects(out, err)}

    upstream.recover()
    rc, text = await _run(tmp_path, upstream, output=out, error_file=err, retry_failed=True)
    assert rc == 1, text  # the refused line still fails
    assert custom_id_counts(out, err) == dict.fromkeys(IDS, 1)
    assert [o["custom_id"] for o in read_result_objects(out)] == [i for i in IDS if i not in REFUSED]
    assert all(o["error"] is None for o in read_result_objects(out))
    assert _errors(err) == {"request-6": ("invalid_request", 400)}
    assert _in_input_order(out) and _in_input_order(err)
    # Each line keeps its id (the same prefix, its input line number).
    assert {o["custom_id"]: o["id"] for o in read_result_objects(out, err)} == ids_before
    # What the server saw: the 503 lines twice, the 400 line and the successes once.
    assert {i: upstream.received[i] for i in IDS} == {i: 2 if i in TRANSIENT else 1 for i in IDS}
    assert "retried  2 lines: 2 succeeded now" in text
    assert "7 succeeded · 1 failed (invalid_request 1)" in text

    # The rewritten files are what a complete run leaves: --resume finds every line done.
    rc, _ = await _run(tmp_path, upstream, output=out, error_file=err, resume=True)
    assert rc == 1
    assert custom_id_counts(out, err) == dict.fromkeys(IDS, 1)
    assert sum(upstream.received.values()) == 10


async def test_retry_failed_with_one_file_replaces_the_lines_in_place(tmp_path: Path,
                                                                      upstream: FlakyUpstream) -> None:
    out = tmp_path / "out.jsonl"
    rc, _ = await _run(tmp_path, upstream, output=out)
    assert rc == 1
    upstream.recover()
    rc, _ = await _run(tmp_path, upstream, output=out, retry_failed=True)
    assert rc == 1
    results = read_result_objects(out)
    assert [o["custom_id"] for o in results] == IDS  # input order, each once
    assert [o["custom_id"] for o in results if o["error"] is not None] == ["request-6"]
    assert _leftovers(tmp_path) == []


async def test_a_line_still_failing_replaces_its_old_error_line(tmp_path: Path, upstream: FlakyUpstream) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    await _run(tmp_path, upstream, output=out, error_file=err)
    rc, text = await _run(tmp_path, upstream, output=out, error_file=err, retry_failed=True)  # not recovered
    assert rc == 1
    assert custom_id_counts(out, err) == dict.fromkeys(IDS, 1)
    assert set(_errors(err)) == TRANSIENT | REFUSED
    assert "retried  2 lines: 0 succeeded now · 2 failed" in text
    upstream.recover()
    rc, _ = await _run(tmp_path, upstream, output=out, error_file=err, retry_failed=True)
    assert rc == 1
    assert set(_errors(err)) == REFUSED
    assert {i: upstream.received[i] for i in TRANSIENT | REFUSED} == {"request-2": 3, "request-5": 3, "request-6": 1}


async def test_a_retry_killed_between_its_two_renames_is_mended_by_the_next(tmp_path: Path,
                                                                          upstream: FlakyUpstream) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    await _run(tmp_path, upstream, output=out, error_file=err)
    old_errors = err.read_bytes()
    upstream.recover()
    await _run(tmp_path, upstream, output=out, error_file=err, retry_failed=True)
    # The output was replaced, the error file not yet: the retried lines are in both files.
    err.write_bytes(old_errors)
    assert custom_id_counts(out, err)["request-2"] == 2
    rc, _ = await _run(tmp_path, upstream, output=out, error_file=err, retry_failed=True)
    assert rc == 1
    assert custom_id_counts(out, err) == dict.fromkeys(IDS, 1)
    assert set(_errors(err)) == REFUSED
    assert upstream.received["request-2"] == 2  # the success counts: not sent a third time


async def test_the_real_command_retries_and_lines_without_a_result_run_too(tmp_path: Path,
                                                                          upstream: FlakyUpstream) -> None:
    src = _input(tmp_path)
    models = write_models_file(tmp_path / "models.toml", upstream.url)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    common = ("-i", str(src), "-o", str(out), "--error-file", str(err), "--model", GATED,
              "--models-file", str(models), "--no-progress")
    rc, text = await acli(*common)
    assert rc == 1, text
    # As if the run had stopped before its last line: that line has no result yet.
    kept = [line for line in out.read_bytes().splitlines(keepends=True) if b'"request-7"' not in line]
    out.write_bytes(b"".join(kept))
    upstream.recover()
    rc, text = await acli(*common, "--retry-failed")
    assert rc == 1, text
    assert custom_id_counts(out, err) == dict.fromkeys(IDS, 1)
    assert set(_errors(err)) == REFUSED
    assert upstream.received["request-7"] == 2 and upstream.received["request-6"] == 1


async def test_nothing_to_retry_leaves_the_files_as_they_are(tmp_path: Path, upstream: FlakyUpstream) -> None:
    upstream.recover()
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    await _run(tmp_path, upstream, output=out, error_file=err)
    before = out.read_bytes(), err.read_bytes()
    rc, text = await _run(tmp_path, upstream, output=out, error_file=err, retry_failed=True)
    assert rc == 1
    assert (out.read_bytes(), err.read_bytes()) == before
    assert "no line to run again" in text
    assert upstream.received["request-6"] == 1


async def test_a_changed_input_stops_the_retry_and_changes_nothing(tmp_path: Path, upstream: FlakyUpstream) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    await _run(tmp_path, upstream, output=out, error_file=err)
    before = out.read_bytes(), err.read_bytes()
    changed = write_lines(tmp_path / "other.jsonl", [chat_line(i + 100, model=GATED) for i in range(8)])
    models = tmp_path / "models.toml"
    rc, text = await run_in_process(input=changed, output=out, error_file=err, model=GATED, models_file=models,
                                    retry_failed=True)
    assert rc == 2
    assert "does not match the input" in text
    assert (out.read_bytes(), err.read_bytes()) == before
    assert _leftovers(tmp_path) == []  # no temporary file stays behind


async def test_a_retry_whose_engine_is_gone_changes_nothing(tmp_path: Path, upstream: FlakyUpstream) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    await _run(tmp_path, upstream, output=out, error_file=err)
    before = out.read_bytes(), err.read_bytes()
    await upstream.stop()  # nothing listens there any more: the engine is unavailable
    rc, text = await _run(tmp_path, upstream, output=out, error_file=err, retry_failed=True)
    assert rc == 2
    assert "The result files are unchanged" in text
    assert (out.read_bytes(), err.read_bytes()) == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(("extra", "message"), [
    ({"resume": True}, "do not go together"),
    ({"output": "https://example.com/out.jsonl"}, "local result files"),
])
async def test_retry_failed_usage_errors(tmp_path: Path, extra: dict, message: str) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1)])
    out = tmp_path / "out.jsonl"
    await run_in_process(input=src, output=out)
    rc, text = await run_in_process(**{"input": src, "output": out, "retry_failed": True, **extra})
    assert rc == 2 and message in text


async def test_retry_failed_without_an_output_file_is_a_usage_error(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1)])
    rc, text = await run_in_process(input=src, output=tmp_path / "none.jsonl", retry_failed=True)
    assert rc == 2 and "no output file" in text
    assert not (tmp_path / "none.jsonl").exists()


@pytest.mark.parametrize(("code", "status", "retriable"), [
    ("batch_cancelled", None, True),
    ("batch_expired", None, True),
    ("engine_unavailable", None, True),
    ("engine_error", 500, True),
    ("upstream_timeout", 504, True),
    ("rate_limit_exceeded", 429, True),
    ("request_timeout", 408, True),
    ("overloaded", 503, True),
    ("invalid_request", 400, False),
    ("not_found", 404, False),
    ("context_length_exceeded", 413, False),
    ("invalid_json", None, False),
    ("missing_model", None, False),
    ("duplicate_custom_id", None, False),
    ("unsupported_endpoint", None, False),
])
def test_which_failures_are_retriable(code: str, status: int | None, retriable: bool) -> None:
    response = {"status_code": status, "request_id": "req_1", "body": {}} if status is not None else None
    assert is_retriable({"code": code, "message": "m"}, response) is retriable
