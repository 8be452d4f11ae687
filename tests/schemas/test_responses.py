"""schemas/responses.py: which Responses requests a batch line may make, and the chat translation both ways.

The output is checked against openai-python's own `Response` type, so the SDK reads what we write.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import Response as SdkResponse

from schemas.inference import RESPONSES, SUPPORTED_ENDPOINTS, usage_of
from schemas.jsonl import RawLine
from schemas.line_validation import LineIssue, LineValidator, ValidLine
from schemas.responses import (
    ParsedRequest,
    RequestProblem,
    Response,
    chat_body,
    from_chat_completion,
    parse_request,
    response_object,
)


def parsed(**body: Any) -> ParsedRequest:
    out = parse_request({"model": "m", "input": "hi", **body})
    assert isinstance(out, ParsedRequest), out
    return out


def problem(**body: Any) -> RequestProblem:
    out = parse_request({"model": "m", **body})
    assert isinstance(out, RequestProblem), out
    return out


def test_a_string_input_is_one_user_turn_after_the_instructions() -> None:
    p = parsed(input="Say hi", instructions="Be brief.", max_output_tokens=8, temperature=0, top_p=0.5,
               metadata={"k": "v"})
    assert p.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    assert chat_body(p) == {"model": "m", "messages": p.messages, "max_tokens": 8, "temperature": 0,
                            "top_p": 0.5}
    assert chat_body(p, "served-name")["model"] == "served-name"


def test_message_lists_keep_roles_and_join_text_parts() -> None:
    p = parsed(input=[
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "earlier answer"}]},
        {"role": "user", "content": "again"},
    ])
    assert p.messages == [
        {"role": "system", "content": "Rules."},  # developer: what every chat server knows as system
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "again"},
    ]
    assert chat_body(p) == {"model": "m", "messages": p.messages}


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": "x", "tools": []}, "tools", "unsupported_parameter"),
    ({"input": "x", "reasoning": {"effort": "low"}}, "reasoning", "unsupported_parameter"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
    ({"input": "x", "text": {"format": {"type": "json_object"}}}, "text", "unsupported_parameter"),
    ({}, "input", "missing_required_parameter"),
    ({"input": ""}, "input", "invalid_value"),
    ({"input": []}, "input", "invalid_value"),
    ({"input": 5}, "input", "invalid_value"),
    ({"input": "x", "temperature": 3}, "temperature", "invalid_value"),
    ({"input": "x", "top_p": 0}, "top_p", "invalid_value"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ({"input": "x", "metadata": {"k": 1}}, "metadata.k", "invalid_value"),
    ({"input": ["x"]}, "input[0]", "invalid_value"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type",
     "unsupported_parameter"),
    ({"input": [{"role": "user", "content": "x", "name": "bob"}]}, "input[0].name", "unsupported_parameter"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
     "input[0].content[0]", "unsupported_content"),
    ({"input": [{"role": "user", "content": []}]}, "input[0].content", "invalid_value"),
])
def test_every_refusal_names_the_field(body: dict[str, Any], param: str, code: str) -> None:
    p = problem(**body)
    assert (p.param, p.code) == (param, code)
    assert param.split("[")[0].split(".")[0] in p.message


def test_null_fields_count_as_absent() -> None:
    p = parsed(tools=None, instructions=None, temperature=None)
    assert p.messages == [{"role": "user", "content": "hi"}]


CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "served",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}}


def test_a_chat_completion_becomes_a_response_the_sdk_reads() -> None:
    p = parsed(instructions="Be brief.", metadata={"run": "7"}, temperature=0.3)
    body = from_chat_completion(p, CHAT)
    assert body is not None
    Response.model_validate(body)
    sdk = SdkResponse.model_validate(body)
    assert sdk.object == "response" and sdk.status == "completed" and sdk.output_text == "Hello!"
    assert sdk.model == "served" and sdk.created_at == 1_700_000_000 and sdk.id.startswith("resp_")
    assert sdk.incomplete_details is None and sdk.metadata == {"run": "7"} and sdk.instructions == "Be brief."
    assert sdk.temperature == 0.3 and sdk.top_p == 1.0
    [item] = body["output"]
    assert (item["type"], item["role"], item["status"]) == ("message", "assistant", "completed")
    assert item["id"].startswith("msg_")
    assert item["content"] == [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]
    assert body["usage"]["input_tokens"] == 11 and body["usage"]["output_tokens"] == 2
    assert body["usage"]["total_tokens"] == 13
    assert usage_of(body) == (11, 2)  # the pipeline's token accounting reads Responses usage


def test_an_answer_cut_by_its_budget_is_incomplete() -> None:
    cut = {**CHAT, "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hel"},
                                "finish_reason": "length"}]}
    body = from_chat_completion(parsed(max_output_tokens=1), cut)
    assert body is not None
    sdk = SdkResponse.model_validate(body)
    assert sdk.status == "incomplete" and sdk.incomplete_details is not None
    assert sdk.incomplete_details.reason == "max_output_tokens" and sdk.max_output_tokens == 1
    assert body["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("chat", [None, [], {}, {"choices": []}, {"choices": [{"message": {"content": 5}}]}])
def test_what_is_not_a_chat_completion_gives_none(chat: Any) -> None:
    assert from_chat_completion(parsed(), chat) is None


def test_response_object_defaults() -> None:
    body = response_object(parsed(), model="m", created_at=5, text="t", finish_reason=None, input_tokens=1,
                           output_tokens=0, response_id="resp_x")
    assert body["id"] == "resp_x" and body["status"] == "completed" and body["metadata"] == {}
    SdkResponse.model_validate(body)


def test_usage_of_still_reads_chat_and_embeddings() -> None:
    assert usage_of(CHAT) == (11, 2)
    assert usage_of({"usage": {"prompt_tokens": 4, "total_tokens": 4}}) == (4, 0)
    assert usage_of({"usage": {"input_tokens": 3, "output_tokens": 0, "total_tokens": 3}}) == (3, 0)


def line(body: dict[str, Any], custom_id: str = "r1") -> RawLine:
    data = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": body})
    return RawLine(1, 0, len(data) + 1, data)


def test_the_line_validator_takes_responses_lines() -> None:
    assert RESPONSES in SUPPORTED_ENDPOINTS
    v = LineValidator(endpoint=RESPONSES, model="m")
    ok = v.validate(line({"model": "m", "input": "hi", "tools": []}))
    # Fields are the engine's to judge (a 400 of that line); the validator wants `input` only.
    assert isinstance(ok, ValidLine) and ok.url == RESPONSES
    for body in ({"model": "m"}, {"model": "m", "input": ""}, {"model": "m", "input": 3}):
        issue = LineValidator(endpoint=RESPONSES, model="m").validate(line(body))
        assert isinstance(issue, LineIssue) and (issue.code, issue.param) == ("invalid_body", "body.input")
