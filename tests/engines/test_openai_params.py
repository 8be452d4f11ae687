"""Body validation errors become one 400 located at the field the client wrote."""

from __future__ import annotations

import pytest

from schemas.inference import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from services.inference.engines.base import EngineResult
from services.inference.engines.openai_params import check_extra_fields, param_path, parse_body


def test_param_path_uses_openai_notation() -> None:
    assert param_path(("messages", 0, "content")) == "messages[0].content"
    assert param_path(("temperature",)) == "temperature"
    assert param_path((3,)) == "[3]"


@pytest.mark.parametrize(
    ("model", "body", "param", "code"),
    [
        (ChatCompletionRequest, {"model": "m"}, "messages", "missing_required_parameter"),
        (ChatCompletionRequest, {"model": "m", "messages": []}, "messages", "invalid_value"),
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
         "messages[0].role", "invalid_value"),
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user"}], "top_p": 0},
         "top_p", "invalid_value"),
        # A union field fails once per member; the error names the field itself.
        (CompletionRequest, {"model": "m", "prompt": {"text": "x"}}, "prompt", "invalid_value"),
        (EmbeddingRequest, {"model": "m", "input": 5}, "input", "invalid_value"),
        (EmbeddingRequest, {"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format",
         "invalid_value"),
    ],
)
def test_validation_errors_are_located(model: type, body: dict, param: str, code: str) -> None:
    result = parse_body(model, body, "req_1")
    assert isinstance(result, EngineResult)
    assert result.status_code == 400
    err = result.body["error"]
    assert err["param"] == param
    assert err["code"] == code
    assert err["type"] == "invalid_request_error"
    assert param in err["message"]


def test_extra_fields_null_and_ignored_ones_pass_unknown_ones_are_named() -> None:
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "user": "u1", "metadata": {"a": "b"},
         "tools": None, "response_format": {"type": "text"}})
    assert check_extra_fields(req, {"response_format"}, "req_1", "m") is None
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "zeta": 1, "audio": {"voice": "x"}})
    bad = check_extra_fields(req, (), "req_1", "m")
    assert bad is not None and bad.status_code == 400
    assert bad.body["error"]["param"] == "audio"  # the first, in name order
    assert bad.body["error"]["code"] == "unsupported_parameter"
