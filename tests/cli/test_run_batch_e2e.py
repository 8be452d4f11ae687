"""`offhours run-batch` end to end with batch-test-model: the real command and the runner in process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from services.inference.engines.fixed_answer import ANSWER
from tests.support.run_batch import (
    REPO,
    chat_line,
    cli,
    custom_id_counts,
    read_results,
    run_in_process,
    write_lines,
)

EXAMPLE = REPO / "examples" / "chat-test.jsonl"


def test_the_example_file_through_the_real_command(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = cli("-i", str(EXAMPLE), "-o", str(out), "--model", "batch-test-model")
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    inputs = [orjson.loads(line) for line in EXAMPLE.read_bytes().splitlines()]
    assert [r.custom_id for r in results] == [i["custom_id"] for i in inputs]  # input order
    for n, r in enumerate(results, 1):
        assert r.error is None and r.response is not None
        assert r.response.status_code == 200
        assert r.response.body is not None
        assert r.response.body["choices"][0]["message"]["content"] == ANSWER
        assert r.response.body["usage"]["completion_tokens"] > 0
        assert r.id.endswith(f"_{n:08d}")
    assert len({r.id for r in results}) == len(results)
    assert len({r.response.request_id for r in results if r.response}) == len(results)
    # The closing summary: counts, tokens, speed, where the output went.
    assert f"{len(inputs)} total · {len(inputs)} succeeded · 0 failed" in proc.stderr
    assert "tokens" in proc.stderr and "lines/s" in proc.stderr
    assert str(out) in proc.stderr


def test_help_documents_every_flag_with_an_example() -> None:
    import argparse

    from services.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["run-batch"]
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {f.dest for f in flags} >= {
        "input_file", "output_file", "output_tmp_dir", "model", "error_file", "max_concurrency", "endpoint",
        "resume", "models_file", "progress", "quiet",
    }
    for action in flags:
        assert action.help and "e.g." in action.help, action.option_strings
    proc = cli("--help")
    assert proc.returncode == 0
    for action in flags:
        assert action.option_strings[-1] in proc.stdout
    assert "exit status" in proc.stdout and "--resume" in proc.stdout.split("examples:")[1]


async def test_failures_go_to_the_error_file_and_the_exit_status_says_so(tmp_path: Path) -> None:
    lines = [chat_line(1), b"{oops", chat_line(2, model="other"), chat_line(3), chat_line(1)]
    src = write_lines(tmp_path / "in.jsonl", lines)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    rc, text = await run_in_process(input=src, output=out, error_file=err)
    assert rc == 1
    assert [r.custom_id for r in read_results(out)] == ["request-1", "request-3"]
    errors = read_results(err)
    assert [(e.error.code, e.error.line) for e in errors if e.error] == [
        ("invalid_json", 2), ("mismatched_model", 3), ("duplicate_custom_id", 5)]
    assert all(e.response is None for e in errors)
    assert "2 succeeded · 3 failed (duplicate_custom_id 1, invalid_json 1, mismatched_model 1)" in text


async def test_without_an_error_file_failures_stay_in_the_output_in_input_order(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1), b"[]", chat_line(2), b"", chat_line(3)])
    out = tmp_path / "out.jsonl"
    rc, _ = await run_in_process(input=src, output=out)
    assert rc == 1
    results = read_results(out)
    assert [(r.custom_id, r.error.code if r.error else None) for r in results] == [
        ("request-1", None), (None, "invalid_json"), ("request-2", None), ("request-3", None)]
    assert [r.id[-8:] for r in results] == ["00000001", "00000002", "00000003", "00000005"]


async def test_an_existing_output_is_overwritten_without_resume(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1)])
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"old content that is not a result\n" * 100)
    rc, _ = await run_in_process(input=src, output=out)
    assert rc == 0
    assert custom_id_counts(out) == {"request-1": 1}


async def test_endpoint_flag_holds_each_line_to_it(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1), chat_line(2, url="/v1/chat/ds-test")])
    out = tmp_path / "out.jsonl"
    rc, _ = await run_in_process(input=src, output=out, endpoint="/v1/chat/ds-test")
    assert rc == 1
    codes = [r.error.code if r.error else None for r in read_results(out)]
    assert codes == ["mismatched_url", None]


async def test_a_line_for_an_endpoint_the_model_does_not_serve_fails_alone(tmp_path: Path) -> None:
    line = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "batch-test-model", "input": "x"}}
    src = write_lines(tmp_path / "in.jsonl", [line, chat_line(1)])
    out = tmp_path / "out.jsonl"
    rc, _ = await run_in_process(input=src, output=out)
    assert rc == 1
    results = read_results(out)
    assert results[0].error is not None and results[0].error.code == "unsupported_endpoint"
    assert results[1].error is None


async def test_usage_errors_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1)])
    out = tmp_path / "out.jsonl"
    cases = [
        (dict(input=tmp_path / "missing.jsonl", output=out), "cannot read input file"),
        (dict(input=tmp_path, output=out), "cannot read input file"),
        (dict(input=src, output=out, model="no-such-model"), "no-such-model"),
        (dict(input=src, output=src), "is the input file"),
        (dict(input=src, output=out, error_file=out), "--error-file must differ"),
        (dict(input=src, output=tmp_path / "no" / "such" / "dir.jsonl"), "cannot write"),
        (dict(input=src, output=out, endpoint="/v1/embeddings"), "does not serve /v1/embeddings"),
        (dict(input=src, output=out, endpoint="/v2/nope"), "--endpoint"),
    ]
    for kw, message in cases:
        rc, text = await run_in_process(**kw)
        assert rc == 2, (kw, text)
        assert message in text, (kw, text)
        assert "Traceback" not in text
    assert not out.exists()  # nothing was touched by a run that could not start


def test_unknown_model_through_the_real_command(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [chat_line(1)])
    proc = cli("-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--model", "nope")
    assert proc.returncode == 2
    assert "'nope' is not in the registry" in proc.stderr and "batch-test-model" in proc.stderr


def test_reads_standard_input(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = cli("-i", "-", "-o", str(out), "--model", "batch-test-model", input=EXAMPLE.read_text())
    assert proc.returncode == 0, proc.stderr
    assert len(read_results(out)) == 20


def test_quiet_prints_nothing_on_success(tmp_path: Path) -> None:
    proc = cli("-i", str(EXAMPLE), "-o", str(tmp_path / "out.jsonl"), "--model", "batch-test-model", "-q")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_progress_log_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    from tests.support.run_batch import write_many

    src = write_many(tmp_path / "in.jsonl", 150_000)
    proc = cli("-i", str(src), "-o", str(tmp_path / "out.jsonl"), "--model", "batch-test-model",
               "--progress-interval", "0.2")
    assert proc.returncode == 0, proc.stderr
    logs = [line for line in proc.stderr.splitlines() if "progress:" in line]
    assert logs, proc.stderr
    assert "lines done" in logs[0] and "lines/s" in logs[0] and "%" in logs[0]
    assert "\r" not in proc.stderr  # no bar drawn into a pipe


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty
    import select
    import subprocess

    from tests.support.run_batch import OFFHOURS, write_many

    src = write_many(tmp_path / "in.jsonl", 150_000)
    master, slave = pty.openpty()
    proc = subprocess.Popen([OFFHOURS, "run-batch", "-i", str(src), "-o", str(tmp_path / "out.jsonl"),
                             "--model", "batch-test-model"],
                            cwd=REPO, stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(60) == 0
    text = seen.decode()
    assert "\r[" in text and "%" in text and "lines ·" in text  # the bar, redrawn in place
    assert "progress:" not in text  # no log lines on a terminal
    assert "150,000 total" in text


@pytest.mark.slow  # a real model
async def test_a_real_model_through_the_registry(tmp_path: Path) -> None:
    # SmolLM2-135M on llama.cpp: run-batch drives a slow, real engine the same way.
    lines = (REPO / "examples" / "chat-smollm2.jsonl").read_bytes().splitlines()[:2]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    rc, text = await run_in_process(input=src, output=out, model="smollm2-135m-instruct", max_concurrency=2)
    assert rc == 0, text
    results = read_results(out)
    assert [r.custom_id for r in results] == [orjson.loads(x)["custom_id"] for x in lines]
    for r in results:
        assert r.response is not None and r.response.body is not None
        assert r.response.body["choices"][0]["message"]["content"].strip()
        assert r.response.body["usage"]["completion_tokens"] > 0
