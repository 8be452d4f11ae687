"""`/v1/responses` lines through `offhours run-batch` on the real in-process engines: the test model
and SmolLM2 (llama.cpp) both answer through their chat path, as Response objects.

Asserts structure and token accounting — generated text varies between builds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.responses import Response as SdkResponse

from schemas.batch_lines import BatchOutputLine
from schemas.inference import RESPONSES
from schemas.responses import Response
from tests.support.run_batch import OFFHOURS, run_in_process, write_lines

CHAT_MODEL = "smollm2-135m-instruct"


def line(custom_id: str, model: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": {"model": model, **body}}


def read(path: Path) -> list[dict[str, Any]]:
    out = [orjson.loads(raw) for raw in path.read_bytes().splitlines()] if path.exists() else []
    for o in out:
        BatchOutputLine.model_validate(o)
    return out


def check_response(body: dict[str, Any], model: str) -> SdkResponse:
    Response.model_validate(body)
    sdk = SdkResponse.model_validate(body)
    assert sdk.object == "response" and sdk.model == model and sdk.status in ("completed", "incomplete")
    [message] = sdk.output
    assert message.type == "message" and message.role == "assistant"
    assert sdk.usage is not None
    assert sdk.usage.total_tokens == sdk.usage.input_tokens + sdk.usage.output_tokens
    return sdk


async def test_test_model_answers_responses_lines(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [
        line("plain", "batch-test-model", input="Say hello", metadata={"k": "v"}),
        line("messages", "batch-test-model", instructions="Be brief.",
             input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]),
        line("tools", "batch-test-model", input="x", tools=[{"type": "web_search"}]),
    ])
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    rc, stderr = await run_in_process(input=src, output=out, error_file=err, endpoint=RESPONSES)
    assert rc == 1, stderr  # completed, with one failed line
    output, errors = read(out), read(err)
    assert [o["custom_id"] for o in output] == ["plain", "messages"]
    for o in output:
        sdk = check_response(o["response"]["body"], "batch-test-model")
        assert sdk.output_text == "This is a test result." and sdk.usage is not None
        assert sdk.usage.output_tokens == 6
    assert output[0]["response"]["body"]["metadata"] == {"k": "v"}
    assert output[1]["response"]["body"]["instructions"] == "Be brief."
    [bad] = errors
    # An unsupported field is that line's 400, naming the field; the other lines go on.
    assert bad["custom_id"] == "tools" and bad["response"]["status_code"] == 400
    assert (bad["error"]["code"], bad["error"]["param"]) == ("unsupported_parameter", "tools")
    assert "12 output" in stderr  # usage is read from input_tokens / output_tokens


@pytest.mark.slow  # a real model
def test_smollm2_answers_responses_lines(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [
        line("short", CHAT_MODEL, input="What color is the sky?", max_output_tokens=8, temperature=0),
        line("cut", CHAT_MODEL, instructions="Answer at length.", max_output_tokens=1, temperature=0,
             input=[{"role": "user", "content": [{"type": "input_text", "text": "Tell me about the sea."}]}]),
    ])
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    proc = subprocess.run(
        [OFFHOURS, "run-batch", "-i", str(src), "-o", str(out), "--error-file", str(err), "--model", CHAT_MODEL,
         "--no-progress"], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OFFHOURS_STATE_DIR": str(tmp_path), "OFFHOURS_LLAMA_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    output = read(out)
    assert read(err) == []
    assert [o["custom_id"] for o in output] == ["short", "cut"]
    short, cut = (check_response(o["response"]["body"], CHAT_MODEL) for o in output)
    assert short.usage is not None and 0 < short.usage.output_tokens <= 8 and short.usage.input_tokens > 5
    # One token of budget cannot finish an answer: the Response says it was cut, and why.
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 1
