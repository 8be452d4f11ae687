"""FastDeploy's input format: lines without `body.model`, the model given by `--model`.

examples/fastdeploy-run-batch.jsonl has the shape of the example in FastDeploy's run-batch document
(custom ids `req-0000N`, chat messages, `temperature` and `max_tokens`, no model). Its output line
must have FastDeploy's and OpenAI's batch output shape.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from schemas.jsonl import RawLine
from schemas.line_validation import LineIssue, LineValidator, ValidLine
from services.inference.engines.fixed_answer import ANSWER
from tests.support.run_batch import REPO, chat_line, cli, read_results, run_in_process, write_lines

EXAMPLE = REPO / "examples" / "fastdeploy-run-batch.jsonl"


def _raw(n: int, line: dict | bytes) -> RawLine:
    data = line if isinstance(line, bytes) else orjson.dumps(line)
    return RawLine(n, 0, len(data), data)


def test_the_fastdeploy_example_runs_through_the_real_command(tmp_path: Path) -> None:
    inputs = [orjson.loads(line) for line in EXAMPLE.read_bytes().splitlines()]
    assert inputs and all("model" not in i["body"] for i in inputs)  # the point of the example
    out = tmp_path / "out.jsonl"
    proc = cli("-i", str(EXAMPLE), "-o", str(out), "--model", "batch-test-model")
    assert proc.returncode == 0, proc.stderr
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["custom_id"] for line in lines] == [i["custom_id"] for i in inputs]
    for line in lines:
        # FastDeploy's (and OpenAI's) batch output line, key for key.
        assert line.keys() == {"id", "custom_id", "response", "error"}
        assert line["error"] is None
        assert line["response"].keys() == {"status_code", "request_id", "body"}
        assert line["response"]["status_code"] == 200
        assert isinstance(line["id"], str) and isinstance(line["response"]["request_id"], str)
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "batch-test-model"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": ANSWER}
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    read_results(out)  # and the output line model of offhours itself
    assert f"{len(inputs)} succeeded · 0 failed" in proc.stderr


async def test_a_line_naming_another_model_is_still_an_error(tmp_path: Path) -> None:
    no_model = chat_line(1)
    del no_model["body"]["model"]
    null_model = chat_line(2)
    null_model["body"]["model"] = None
    src = write_lines(tmp_path / "in.jsonl", [no_model, null_model, chat_line(3, model="other-model"), chat_line(4)])
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    rc, _ = await run_in_process(input=src, output=out, error_file=err)
    assert rc == 1
    assert [r.custom_id for r in read_results(out)] == ["request-1", "request-2", "request-4"]
    assert [(e.custom_id, e.error.code) for e in read_results(err) if e.error] == [("request-3", "mismatched_model")]


async def test_the_default_model_works_with_endpoint_and_resume(tmp_path: Path) -> None:
    lines = [chat_line(i) for i in range(6)]
    for line in lines[::2]:
        del line["body"]["model"]
    src = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    rc, _ = await run_in_process(input=src, output=out, endpoint="/v1/chat/completions")
    assert rc == 0
    # A resumed run validates the done lines again: they must still be valid, model or not.
    written = out.read_bytes()
    out.write_bytes(b"".join(written.splitlines(keepends=True)[:3]))
    rc, _ = await run_in_process(input=src, output=out, endpoint="/v1/chat/completions", resume=True)
    assert rc == 0
    assert [r.custom_id for r in read_results(out)] == [f"request-{i}" for i in range(6)]


def test_the_shared_validator_still_requires_body_model() -> None:
    """The Batch API keeps OpenAI's rule; only run-batch fills the model in."""
    line = orjson.loads(EXAMPLE.read_bytes().splitlines()[0])
    shared = LineValidator(model="batch-test-model").validate(_raw(1, line))
    assert isinstance(shared, LineIssue) and shared.code == "missing_model"
    filled = LineValidator(model="batch-test-model", default_model="batch-test-model").validate(_raw(1, line))
    assert isinstance(filled, ValidLine) and filled.body["model"] == "batch-test-model"
    # A model that is there but not a string is not "missing": it is still refused.
    line["body"]["model"] = 7
    wrong = LineValidator(model="batch-test-model", default_model="batch-test-model").validate(_raw(1, line))
    assert isinstance(wrong, LineIssue) and wrong.code == "missing_model"
