"""The upload-time check of a `purpose=batch` file: JSONL shape only, while the bytes stream by.

Each line ≤ the line limit, at most `max_lines` non-blank lines, each non-blank line a JSON
object. That is all the upload can fairly judge: whether a line is a valid *request* depends on
the batch it is used in (endpoint, model), so schemas.line_validation runs when a batch is
created (the dispatcher's streaming pass). Codes match that validator's, so a client sees
`line_too_large` / `invalid_utf8` / `invalid_json` whichever stage finds the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from schemas.jsonl import LineSplitter, RawLine


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


@dataclass(frozen=True, slots=True)
class ShapeError:
    line: int
    code: str
    message: str


class JsonlShapeCheck:
    """Feed the file's chunks in order; `error` holds the first problem (and checking stops there)."""

    def __init__(self, *, max_line_bytes: int, max_lines: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self._splitter = LineSplitter(max_line_bytes)
        self.lines = 0  # non-blank lines seen
        self.error: ShapeError | None = None

    def feed(self, chunk: bytes) -> ShapeError | None:
        if self.error is None:
            self._check(self._splitter.feed(chunk))
        return self.error

    def finish(self) -> ShapeError | None:
        if self.error is None:
            self._check(self._splitter.finish())
            if self.error is None and self.lines == 0:
                self.error = ShapeError(0, "empty_file", "The file has no JSONL lines; a batch file needs at least one.")
        return self.error

    def _check(self, lines: list[RawLine]) -> None:
        for raw in lines:
            self.error = self._problem(raw)
            if self.error is not None:
                return

    def _problem(self, raw: RawLine) -> ShapeError | None:
        n = raw.number
        if raw.oversize:
            return ShapeError(n, "line_too_large", f"Line {n} is longer than the {self.max_line_bytes} byte limit.")
        if not raw.data or raw.data.isspace():
            return None
        self.lines += 1
        if self.lines > self.max_lines:
            return ShapeError(
                n, "too_many_lines", f"Line {n}: a batch file may hold at most {self.max_lines} requests."
            )
        try:
            obj = orjson.loads(raw.data)
        except orjson.JSONDecodeError as exc:
            try:
                raw.data.decode("utf-8")
            except UnicodeDecodeError as uexc:
                return ShapeError(n, "invalid_utf8", f"Line {n} is not valid UTF-8 (byte {uexc.start}).")
            return ShapeError(n, "invalid_json", f"Line {n} is not valid JSON: {exc}.")
        if not isinstance(obj, dict):
            return ShapeError(n, "invalid_json", f"Line {n} must be a JSON object, got {_json_type(obj)}.")
        return None
