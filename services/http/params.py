"""Turning query strings, form fields and JSON bodies into pydantic models, or into a located 400.

Every handler parses its input through these, so a bad value always answers the same way:
400, `invalid_request_error`, `param` = the offending parameter's wire name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from schemas.text import cut
from services.http.errors import APIError, invalid_request

M = TypeVar("M", bound=BaseModel)

MISSING_PARAMETER = "missing_required_parameter"
MESSAGE_MAX_CHARS = 1000
PARAM_MAX_CHARS = 200
INVALID_VALUE = "invalid_value"


def _param_name(loc: tuple[int | str, ...]) -> str | None:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


def validation_error(exc: ValidationError, *, default_param: str | None = None) -> APIError:
    """The first error of `exc` as a 400 naming its parameter (the others would follow from a fix)."""
    err = exc.errors(include_url=False)[0]
    param = _param_name(tuple(err["loc"])) or default_param
    if param is not None:
        param = cut(param, PARAM_MAX_CHARS)  # a location can hold a client's key (metadata.<key>)
    where = f"'{param}'" if param else "the request"
    if err["type"] == "missing":
        return invalid_request(f"Missing required parameter: {where}.", param=param, code=MISSING_PARAMETER)
    message = str(err["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    # Validators quote what they were given cut short already; this bounds any message that does not.
    message = cut(message, MESSAGE_MAX_CHARS)
    value = err.get("input")
    # Short values only, judged before the repr is built (a value may be megabytes).
    short = isinstance(value, int | float) or (isinstance(value, str) and len(value) <= 96)
    shown = f" (got {value!r})" if short and len(repr(value)) <= 100 else ""
    return invalid_request(f"Invalid value for {where}: {message}{shown}.", param=param, code=INVALID_VALUE)


def parse_fields(
    model: type[M], fields: Mapping[str, Any], *, default_param: str | None = None,
    own_codes: frozenset[str] | set[str] | tuple[str, ...] = (),
) -> M:
    """`model` from `fields`, or a 400 naming the parameter. A validator that raises a
    PydanticCustomError whose type is in `own_codes` keeps that type as the error `code`."""
    try:
        return model.model_validate(dict(fields))
    except ValidationError as exc:
        error = validation_error(exc, default_param=default_param)
        first = exc.errors(include_url=False)[0]
        if first["type"] in own_codes:
            error.code = first["type"]
        raise error from None


async def json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 `invalid_json` saying what is wrong with it.
    Bodies are bounded by the app's client_max_size (413)."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise invalid_request("The request body is empty; a JSON object is expected.", code="invalid_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return data


def parse_query(request: web.Request, model: type[M]) -> M:
    # A repeated key keeps its last value, as most frameworks do.
    return parse_fields(model, dict(request.query.items()))


async def read_json(request: web.Request, model: type[M]) -> M:
    """The JSON body validated as `model`."""
    return parse_fields(model, await json_object(request))
