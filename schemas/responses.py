"""`/v1/responses` in a batch: the request subset offhours answers, and its translation to and from chat.

A Responses request is checked here, once, for every engine that answers it through a chat path
(the in-process engines, and `upstream` towards servers without `/v1/responses`): only the fields
a chat completion can honour are accepted, and any other field is that line's 400 naming the field
— a batch must not silently drop `tools` or `reasoning` and bill the line as answered.

The output body is OpenAI's Response object (openai-python's `types.responses.Response`): one
`message` item of `output_text` content, `usage` in `input_tokens` / `output_tokens`, `status`
`completed`, or `incomplete` with `incomplete_details` when the token budget cut the answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# The fields a Responses line may set; anything else is unsupported_parameter.
REQUEST_FIELDS: frozenset[str] = frozenset(
    {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "metadata"})
_ROLES = ("user", "system", "developer", "assistant")
# Content part types that carry text: input_text from the user side, output_text in an earlier
# assistant turn replayed as history (what a Response's own output looks like when sent back).
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_MESSAGE_KEYS = frozenset({"type", "role", "content"})


class ResponsesRequest(BaseModel):
    """The accepted request, after `parse_request`; `input` already as (role, text) pairs."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[Any]  # items are checked by _message, which names the item at fault
    instructions: str | None = None
    # OpenAI's floor is 16; small local models and tests want fewer, and nothing breaks below it.
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    metadata: dict[str, str] | None = Field(None, max_length=16)


@dataclass(slots=True, frozen=True)
class RequestProblem:
    """Why a request is refused: what the line's 400 says (`code`, `param` as OpenAI names them)."""

    message: str
    param: str | None
    code: str


@dataclass(slots=True)
class ParsedRequest:
    request: ResponsesRequest
    messages: list[dict[str, str]]  # chat messages: instructions first, then the input's turns


def _unsupported(param: str, detail: str = "") -> RequestProblem:
    message = f"the parameter '{param}' is not supported for /v1/responses in a batch"
    return RequestProblem(f"{message}: {detail}" if detail else message, param, "unsupported_parameter")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(i: int, item: Any) -> dict[str, str] | RequestProblem:
    where = f"input[{i}]"
    if not isinstance(item, dict):
        return RequestProblem(f"{where} must be a message object", where, "invalid_value")
    kind = item.get("type", "message")
    if kind != "message":
        return _unsupported(f"{where}.type", f"only message items are answered, got {kind!r}")
    for key in sorted(item):
        if key not in _MESSAGE_KEYS and item[key] is not None:
            return _unsupported(f"{where}.{key}")
    role = item.get("role")
    if role not in _ROLES:
        return RequestProblem(f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}",
                              f"{where}.role", "invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list) and content:
        texts: list[str] = []
        for j, part in enumerate(content):
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype not in _TEXT_PARTS or not isinstance(part.get("text"), str):  # type: ignore[union-attr]
                return RequestProblem(f"{where}.content[{j}]: only text content parts are answered, got type "
                                      f"{ptype!r}", f"{where}.content[{j}]", "unsupported_content")
            texts.append(part["text"])  # type: ignore[index]
        text = "\n".join(texts)
    else:
        return RequestProblem(f"{where}.content must be a string or a non-empty array of input_text parts",
                              f"{where}.content", "invalid_value")
    # Chat servers that predate the `developer` role reject it; it means the same as `system`.
    return {"role": "system" if role == "developer" else role, "content": text}


def parse_request(body: dict[str, Any]) -> ParsedRequest | RequestProblem:
    """The request and its chat messages, or the one problem its line's 400 names.

    A field sent as null counts as absent, as the OpenAI API treats it.
    """
    for name in sorted(body):
        if name not in REQUEST_FIELDS and body[name] is not None:
            return _unsupported(name)
    try:
        req = ResponsesRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = tuple(first["loc"])
        if loc and loc[0] == "input":
            loc = ("input",)  # a union's members fail one by one; the field is what the client wrote
        param = _loc(loc) or None
        if first["type"] == "missing":
            return RequestProblem(f"missing required parameter '{param}'", param, "missing_required_parameter")
        if param == "input":
            return RequestProblem("invalid value for 'input': a string or an array of messages is required",
                                  param, "invalid_value")
        return RequestProblem(f"invalid value for '{param}': {first['msg']}", param, "invalid_value")
    messages: list[dict[str, str]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        if not req.input:
            return RequestProblem("input must not be empty", "input", "invalid_value")
        messages.append({"role": "user", "content": req.input})
    else:
        if not req.input:
            return RequestProblem("input must not be an empty array", "input", "invalid_value")
        for i, item in enumerate(req.input):
            m = _message(i, item)
            if isinstance(m, RequestProblem):
                return m
            messages.append(m)
    return ParsedRequest(req, messages)


def chat_body(parsed: ParsedRequest, model: str | None = None) -> dict[str, Any]:
    """The chat completion request that answers `parsed` (`model` overrides the request's)."""
    req = parsed.request
    body: dict[str, Any] = {"model": model or req.model, "messages": parsed.messages}
    if req.max_output_tokens is not None:
        # max_tokens, not max_completion_tokens: every chat server (older vLLM, llama_cpp.server) reads it.
        body["max_tokens"] = req.max_output_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    return body


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def response_object(parsed: ParsedRequest, *, model: str, created_at: int, text: str, finish_reason: str | None,
                    input_tokens: int, output_tokens: int, response_id: str | None = None) -> dict[str, Any]:
    """A Response object of one assistant message; `finish_reason` is the chat answer's."""
    req = parsed.request
    incomplete = finish_reason in ("length", "content_filter")
    status = "incomplete" if incomplete else "completed"
    return {
        "id": response_id or _new_id("resp_"),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": ({"reason": "max_output_tokens" if finish_reason == "length" else "content_filter"}
                               if incomplete else None),
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": model,
        "output": [{
            "type": "message",
            "id": _new_id("msg_"),
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": req.metadata or {},
    }


def from_chat_completion(parsed: ParsedRequest, chat: Any) -> dict[str, Any] | None:
    """The Response object for a chat completion body; None if `chat` is not one (a broken answer)."""
    if not isinstance(chat, dict):
        return None
    choices = chat.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if text is None:
        text = ""
    if not isinstance(text, str):
        return None
    usage = chat.get("usage") if isinstance(chat.get("usage"), dict) else {}
    inp, outp = usage.get("prompt_tokens"), usage.get("completion_tokens")
    created = chat.get("created")
    model = chat.get("model")
    return response_object(
        parsed, model=model if isinstance(model, str) else parsed.request.model,
        created_at=created if isinstance(created, int) else 0, text=text,
        finish_reason=choices[0].get("finish_reason"),
        input_tokens=inp if isinstance(inp, int) else 0, output_tokens=outp if isinstance(outp, int) else 0)


# --- the reference shape of the output body (tests validate against it; hot paths build dicts) ---


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class OutputMessage(BaseModel):
    type: Literal["message"]
    id: str
    status: Literal["completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class Response(BaseModel):
    id: str
    object: Literal["response"]
    created_at: int
    model: str
    status: Literal["completed", "incomplete"]
    incomplete_details: IncompleteDetails | None
    output: list[OutputMessage]
    usage: ResponseUsage
    metadata: dict[str, str]
