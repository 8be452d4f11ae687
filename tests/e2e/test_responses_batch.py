"""A `/v1/responses` batch with the official `openai` SDK through the whole service (api, dispatcher, worker
as real processes), answered by batch-test-model: every output line's body is a Response object."""

from __future__ import annotations

import orjson
from openai.types.responses import Response as SdkResponse

from schemas.batch_lines import BatchOutputLine
from schemas.inference import RESPONSES
from schemas.responses import Response
from tests.support.lines import jsonl
from tests.support.processes import MakeStack, assert_exactly_once, download_lines, upload, wait_status

MODEL = "batch-test-model"


def responses_line(custom_id: str, **body: object) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": RESPONSES,
                         "body": {"model": MODEL, **body}})


async def test_responses_batch_through_the_sdk(make_stack: MakeStack) -> None:
    stack = await make_stack(workers=(MODEL,))
    client = await stack.client()
    good = [f"r-{i}" for i in range(6)]
    lines = [responses_line(c, input=f"question {c}", metadata={"n": c}) for c in good[:3]]
    lines += [responses_line(c, instructions="Be brief.", max_output_tokens=16,
                             input=[{"role": "user", "content": [{"type": "input_text", "text": c}]}])
              for c in good[3:]]
    lines.append(responses_line("unsupported", input="x", previous_response_id="resp_123"))
    file_id = await upload(client, jsonl(lines))

    created = await client.batches.create(input_file_id=file_id, endpoint="/v1/responses", completion_window="24h")
    assert created.endpoint == RESPONSES
    batch = await wait_status(client, created.id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 6, 1)

    output = await download_lines(client, batch.output_file_id)
    errors = await download_lines(client, batch.error_file_id)
    assert_exactly_once(output, errors, [*good, "unsupported"])
    assert [o["custom_id"] for o in output] == good
    for o in output:
        BatchOutputLine.model_validate(o)
        body = o["response"]["body"]
        Response.model_validate(body)
        sdk = SdkResponse.model_validate(body)
        assert sdk.object == "response" and sdk.status == "completed" and sdk.model == MODEL
        assert sdk.output_text == "This is a test result."
    assert output[0]["response"]["body"]["metadata"] == {"n": "r-0"}
    # The batch's usage sums the Responses usage of its lines (input_tokens / output_tokens).
    assert batch.usage is not None and batch.usage.output_tokens == 6 * 6
    assert batch.usage.input_tokens == sum(o["response"]["body"]["usage"]["input_tokens"] for o in output)

    [bad] = errors
    assert bad["response"]["status_code"] == 400
    assert (bad["error"]["code"], bad["error"]["param"]) == ("unsupported_parameter", "previous_response_id")
