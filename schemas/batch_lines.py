"""The line formats a batch writes: the output line and the error line.

The input line is defined by its validator, schemas/line_validation.py: every way a line can be
wrong needs its own located error code, which a pydantic model's errors would not give.

Output and error lines share one shape (as in OpenAI's and Bailian's files):
`{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {...} | null}`.
A request the engine answered with a 4xx/5xx keeps that response and goes to the error file;
a line that never reached an engine (bad JSON, duplicate id, expiry, cancel) has
`response: null` and a located `error` (`code`, `message`, `param`, `line`).

Hot paths build these as plain dicts with the helpers below (orjson serialises them); the
pydantic models are the reference definition and what tests validate against.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class LineResponse(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any] | None = None


class LineError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchOutputLine(BaseModel):
    id: str
    custom_id: str | None
    response: LineResponse | None
    error: LineError | None = None


# The error file uses the same shape; the alias makes call sites say which file they mean.
BatchErrorLine = BatchOutputLine


def output_line(line_id: str, custom_id: str | None, status_code: int, request_id: str, body: Any) -> dict:
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def error_line(
    line_id: str,
    custom_id: str | None,
    code: str,
    message: str,
    *,
    param: str | None = None,
    line: int | None = None,
    response: dict | None = None,
) -> dict:
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message, "param": param, "line": line},
    }
