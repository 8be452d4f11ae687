"""--resume: after SIGKILL, Ctrl-C or a torn line, every input line's result is present exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.support.run_batch import (
    OFFHOURS,
    REPO,
    chat_line,
    cli,
    line_number,
    read_result_objects,
    read_results,
    run_in_process,
    write_lines,
)

N_BIG = 200_000


def mixed_file(path: Path, n: int, *, model: str = "null-model") -> Counter[str | None]:
    """n lines, mostly good, with id-less bad lines, duplicates and blank lines mixed in.

    Returns how many result lines each custom_id must end up with (None: id-less errors).
    """
    expected: Counter[str | None] = Counter()
    with open(path, "wb") as f:
        block = []
        for i in range(n):
            if i % 997 == 13:
                block.append(b'{"custom_id": broken')  # invalid_json, no id
                expected[None] += 1
            elif i % 1009 == 17:
                block.append(orjson.dumps(chat_line(i - 1, model=model)))  # duplicate of the line before
                expected[f"request-{i - 1}"] += 1
            elif i % 1013 == 19:
                block.append(b"")  # blank: no result at all
            else:
                block.append(orjson.dumps(chat_line(i, model=model)))
                expected[f"request-{i}"] += 1
            if len(block) == 10_000:
                f.write(b"\n".join(block) + b"\n")
                block = []
        if block:
            f.write(b"\n".join(block) + b"\n")
    return expected


def check_complete(expected: Counter[str | None], *paths: Path) -> None:
    per_file = [read_result_objects(p) for p in paths]  # each line parses as an output line
    results = [r for rs in per_file for r in rs]
    assert Counter(r["custom_id"] for r in results) == expected
    numbers = [line_number(r) for r in results]
    assert len(numbers) == len(set(numbers))  # no input line answered twice
    for rs in per_file:  # each file is in input order
        nums = [line_number(r) for r in rs]
        assert nums == sorted(nums)


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([OFFHOURS, "run-batch", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_growth(proc: subprocess.Popen[bytes], path: Path, min_bytes: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= min_bytes:
            return
        if proc.poll() is not None:
            pytest.fail(f"run-batch ended before it could be interrupted: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    pytest.fail("output did not grow")


@pytest.mark.slow  # SIGKILL of a 200k-line run
@pytest.mark.parametrize("error_file", [False, True], ids=["one-file", "separate-error-file"])
def test_resume_after_sigkill_mid_run(tmp_path: Path, error_file: bool) -> None:
    src = tmp_path / "in.jsonl"
    expected = mixed_file(src, N_BIG)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    args = ["-i", str(src), "-o", str(out), "--model", "null-model", "--no-progress"]
    if error_file:
        args += ["--error-file", str(err)]
    proc = start(*args)
    wait_for_growth(proc, out, 3_000_000)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes()
    kept = before[: before.rfind(b"\n") + 1]  # what a resume must keep, byte for byte
    assert len(kept) > 0 and kept.count(b"\n") < sum(expected.values())  # really mid-run

    done = cli(*args, "--resume")
    assert done.returncode == 1, done.stderr  # the corpus has bad lines
    assert "lines were already done" in done.stderr
    assert out.read_bytes().startswith(kept)  # nothing written was redone or rewritten
    check_complete(expected, out, err)
    ids = {r["id"].rpartition("_")[0] for r in read_result_objects(out, err)}
    assert len(ids) == 1  # the resumed run kept the first run's id prefix


@pytest.mark.slow  # a 200k-line run, interrupted
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    expected = mixed_file(src, N_BIG)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    args = ["-i", str(src), "-o", str(out), "--error-file", str(err), "--model", "null-model",
            "--no-progress"]
    proc = start(*args)
    wait_for_growth(proc, out, 3_000_000)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"--resume" in stderr and b"Traceback" not in stderr
    assert out.read_bytes().endswith(b"\n")  # a clean stop leaves no torn line
    partial = read_result_objects(out, err)
    assert 0 < len(partial) < sum(expected.values())

    done = cli(*args, "--resume")
    assert done.returncode == 1, done.stderr
    assert f"{len(partial):,} lines were already done" in done.stderr
    check_complete(expected, out, err)


async def test_resume_repairs_a_torn_last_line(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(50)])
    out = tmp_path / "out.jsonl"
    assert (await run_in_process(input=src, output=out))[0] == 0
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:20]) + lines[20][:37])  # a crash in the middle of line 21
    rc, text = await run_in_process(input=src, output=out, resume=True)
    assert rc == 0, text
    assert "torn last line" in text and "20 lines were already done" in text
    assert out.read_bytes().startswith(b"".join(lines[:20]))
    check_complete(Counter(f"request-{i}" for i in range(50)), out)


async def test_resume_when_output_and_error_file_stopped_at_different_lines(tmp_path: Path) -> None:
    # One file's buffer reached the disk, the other's did not: the two files are not at the
    # same input line, and the resume must be exact anyway (also for id-less and duplicate lines).
    lines: list[object] = []
    for i in range(60):
        lines.append(chat_line(i))
        if i % 7 == 3:
            lines.append(b"not json")
        if i % 11 == 5:
            lines.append(chat_line(i))  # duplicate
    src = write_lines(tmp_path / "in.jsonl", lines)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    assert (await run_in_process(input=src, output=out, error_file=err))[0] == 1
    full = Counter(r.custom_id for r in read_results(out, err))
    out_lines, err_lines = out.read_bytes().splitlines(True), err.read_bytes().splitlines(True)
    for keep_out, keep_err in [(50, 2), (3, len(err_lines)), (0, 5), (len(out_lines), 0)]:
        out.write_bytes(b"".join(out_lines[:keep_out]))
        err.write_bytes(b"".join(err_lines[:keep_err]))
        rc, text = await run_in_process(input=src, output=out, error_file=err, resume=True)
        assert rc == 1, text
        check_complete(full, out, err)
        assert out.read_bytes().startswith(b"".join(out_lines[:keep_out]))
        assert err.read_bytes().startswith(b"".join(err_lines[:keep_err]))


async def test_resume_of_a_finished_run_does_nothing(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(10)])
    out = tmp_path / "out.jsonl"
    assert (await run_in_process(input=src, output=out))[0] == 0
    before = out.read_bytes()
    rc, text = await run_in_process(input=src, output=out, resume=True)
    assert rc == 0 and out.read_bytes() == before
    assert "10 lines were already done" in text and "(0 lines this run)" in text


async def test_resume_without_earlier_output_starts_from_the_top(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(5)])
    out = tmp_path / "out.jsonl"
    rc, text = await run_in_process(input=src, output=out, resume=True)
    assert rc == 0 and "no earlier output" in text
    check_complete(Counter(f"request-{i}" for i in range(5)), out)


async def test_resume_refuses_a_changed_input(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(10)])
    out = tmp_path / "out.jsonl"
    assert (await run_in_process(input=src, output=out))[0] == 0
    write_lines(src, [chat_line(i + 100) for i in range(10)])
    rc, text = await run_in_process(input=src, output=out, resume=True)
    assert rc == 2
    assert "does not match the input" in text and "'request-0'" in text and "'request-100'" in text


async def test_resume_refuses_an_output_it_did_not_write(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"some": "other file"}\n')
    rc, text = await run_in_process(input=src, output=out, resume=True)
    assert rc == 2
    assert "not an output line of offhours run-batch" in text and "without --resume" in text
    assert out.read_bytes() == b'{"some": "other file"}\n'


def test_killed_during_the_first_block_leaves_a_file_resume_accepts(tmp_path: Path) -> None:
    # The file may be empty or torn at the very first line; either way resume must cope.
    src = write_lines(tmp_path / "in.jsonl", [chat_line(i, model="null-model") for i in range(100)])
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id":"batch_req_ab')  # torn first line, no newline anywhere
    done = cli("-i", str(src), "-o", str(out), "--model", "null-model", "--resume")
    assert done.returncode == 0, done.stderr
    check_complete(Counter(f"request-{i}" for i in range(100)), out)
    assert os.path.getsize(out) > 0
