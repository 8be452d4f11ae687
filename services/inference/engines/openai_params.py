"""Turning a request body into a typed request, or into the located 400 a client would get.

The in-process engines share this: the pydantic models in `schemas/inference.py` define the
fields; each engine names the extra fields it honours or may safely ignore, and anything
else is answered with OpenAI's "unsupported parameter" shape, with `param` set to the field.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.errors import error_body
from schemas.responses import ParsedRequest, RequestProblem, from_chat_completion, parse_request
from services.inference.engines.base import EngineResult, bad_request

M = TypeVar("M", bound=BaseModel)

# Fields that change nothing about the answer a batch line gets: accepted and ignored, as
# OpenAI's own batch endpoint does for them.
IGNORED_FIELDS: frozenset[str] = frozenset({"user", "metadata", "store", "service_tier", "stream_options"})


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def param_path(loc: Sequence[Any]) -> str:
    """("messages", 0, "role") -> "messages[0].role", the way OpenAI names a parameter."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _common_prefix(locs: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    prefix = locs[0]
    for loc in locs[1:]:
        n = 0
        while n < min(len(prefix), len(loc)) and prefix[n] == loc[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


def validation_error(exc: ValidationError, request_id: str) -> EngineResult:
    """One 400 for a failed body, located at the field that failed.

    A union field (`prompt: str | list[str] | ...`) fails once per member with locations
    like ("prompt", "str"); their common prefix names the field the client wrote.
    """
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    loc = _common_prefix(locs) or locs[0]
    first = errors[0]
    param = param_path(loc) or None
    if len(errors) > 1 and loc != locs[0]:
        message = f"invalid value for '{param}': it matches none of the accepted types"
    else:
        message = f"invalid value for '{param_path(first['loc'])}': {first['msg']}"
        if first["type"] == "missing":
            message = f"missing required parameter '{param_path(first['loc'])}'"
    return bad_request(request_id, message, param=param, code="invalid_value" if first["type"] != "missing"
                       else "missing_required_parameter")


def parse_body(model_cls: type[M], body: dict[str, Any], request_id: str) -> M | EngineResult:
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        return validation_error(exc, request_id)


def unsupported(request_id: str, model: str, param: str, detail: str = "") -> EngineResult:
    message = f"model {model!r} does not support the parameter '{param}'"
    return bad_request(request_id, f"{message}: {detail}" if detail else message, param=param,
                       code="unsupported_parameter")


def check_extra_fields(request: BaseModel, handled: Collection[str], request_id: str,
                       model: str) -> EngineResult | None:
    """400 for the first field the engine neither honours nor may ignore; None if all are fine.

    A field sent as null is treated as absent, as the OpenAI API does.
    """
    for name in sorted(request.model_extra or {}):
        value = (request.model_extra or {})[name]
        if name in handled or name in IGNORED_FIELDS or value is None:
            continue
        return unsupported(request_id, model, name)
    return None


def parse_responses(body: dict[str, Any], request_id: str) -> ParsedRequest | EngineResult:
    """A `/v1/responses` body checked once for every engine that answers it through chat, or its 400."""
    parsed = parse_request(body)
    if isinstance(parsed, RequestProblem):
        return bad_request(request_id, parsed.message, param=parsed.param, code=parsed.code)
    return parsed


def responses_result(parsed: ParsedRequest, chat: EngineResult) -> EngineResult:
    """A chat path's answer as the Response object the line expects; errors are kept as they are.

    The chat path locates its errors at chat fields; the client wrote Responses ones.
    """
    if not 200 <= chat.status_code < 300:
        err = chat.body.get("error") if isinstance(chat.body, dict) else None
        if isinstance(err, dict) and isinstance(param := err.get("param"), str):
            err["param"] = _RESPONSES_PARAMS.get(param.split("[", 1)[0], param)
        return chat
    body = from_chat_completion(parsed, chat.body)
    if body is None:
        return EngineResult(502, error_body("the chat answer behind this response is not a chat completion",
                                            type="upstream_error", code="upstream_invalid_response"),
                            chat.request_id)
    return EngineResult(chat.status_code, body, chat.request_id)


_RESPONSES_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens",
                     "max_completion_tokens": "max_output_tokens"}
