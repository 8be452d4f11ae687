"""The one line validator: run-batch, the Files upload check and the dispatcher all use it.

It answers either a `ValidLine` or a `LineIssue` located by line number, `param` and a
stable `code`. Checks are hand-written rather than a pydantic model per line because this
runs once per request on the hot path; the engines parse bodies fully later and answer
a per-line 400 for what only they can judge (e.g. unsupported sampling parameters).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.inference import (
    CHAT_COMPLETIONS,
    CHAT_DS_TEST,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    SUPPORTED_ENDPOINTS,
)
from schemas.jsonl import DEFAULT_MAX_LINE_BYTES, RawLine
from schemas.text import DEFAULT_QUOTE_CHARS, cut, quote

_loads = orjson.loads

# Every code a line can fail validation with; docs/errors.md explains each.
LINE_ERROR_CODES: tuple[str, ...] = (
    "line_too_large",
    "invalid_utf8",
    "invalid_json",
    "missing_custom_id",
    "invalid_custom_id",
    "duplicate_custom_id",
    "invalid_method",
    "missing_url",
    "mismatched_url",
    "unsupported_url",
    "invalid_body",
    "missing_model",
    "mismatched_model",
)

# Field each endpoint's body must carry, with the JSON type it must have.
_REQUIRED_BODY_FIELD: dict[str, tuple[str, tuple[type, ...]]] = {
    CHAT_COMPLETIONS: ("messages", (list,)),
    CHAT_DS_TEST: ("messages", (list,)),
    COMPLETIONS: ("prompt", (str, list)),
    EMBEDDINGS: ("input", (str, list)),
    # The rest of a Responses body is judged by the engine (schemas/responses.py), as a 400 of that line.
    RESPONSES: ("input", (str, list)),
}


@dataclass(slots=True)
class ValidLine:
    number: int
    start: int
    end: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(slots=True)
class LineIssue:
    number: int
    start: int
    end: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None


# ~130k ids (~16 MB) stay in the dict; a file with more pays ~0.5 µs a line for the table.
SPILL_AT = 1 << 17


class IdTable:
    """hash(custom_id) -> first line number in two flat arrays: 24-48 bytes an id, not ~120.

    A dict entry holds two int objects; for the millions of short lines a 500 MB file can have,
    that alone would be hundreds of MB. Open addressing with linear probing, at most half full;
    0 marks an empty slot, so a hash of 0 is stored as 1 (one more 64-bit collision, harmless).
    """

    def __init__(self, capacity: int = 1 << 19) -> None:
        self._keys = array("q", bytes(8 * capacity))
        self._lines = array("I", bytes(4 * capacity))
        self._mask = capacity - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def get(self, key: int) -> int:
        """The line number stored for `key`, or 0."""
        key = key or 1
        keys, mask = self._keys, self._mask
        i = key & mask
        while k := keys[i]:
            if k == key:
                return self._lines[i]
            i = (i + 1) & mask
        return 0

    def put(self, key: int, line: int) -> None:
        """Store a key that is not in the table yet."""
        key = key or 1
        keys, mask = self._keys, self._mask
        i = key & mask
        while keys[i]:
            i = (i + 1) & mask
        keys[i] = key
        self._lines[i] = min(line, 0xFFFFFFFF)
        self._count += 1
        if self._count * 2 > mask:
            self._grow()

    def _grow(self) -> None:
        old_keys, old_lines = self._keys, self._lines
        capacity = 2 * (self._mask + 1)
        self._keys = array("q", bytes(8 * capacity))
        self._lines = array("I", bytes(4 * capacity))
        self._mask = capacity - 1
        self._count = 0
        for key, line in zip(old_keys, old_lines, strict=True):
            if key:
                self.put(key, line)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _shown(value: Any, limit: int) -> str:
    """A value from a line, as a message quotes it: strings cut, containers by their type only
    (their repr could be megabytes, and is never needed to see what is wrong)."""
    if isinstance(value, dict | list):
        return f"a JSON {_type_name(value)}"
    return quote(value, limit)


# Unknown field names a message lists before it only counts the rest.
_MAX_LISTED_FIELDS = 10


class LineValidator:
    """Stateful across one file: it remembers custom_ids to report duplicates.

    `endpoint`: the batch's endpoint; every line's url must equal it. None (run-batch without
    --endpoint) accepts any supported endpoint. `model`: the batch's one model; None adopts
    the first valid line's model and then holds every later line to it. `quote_chars`: how much
    of a user-supplied string a message quotes (messages are stored on the batch and sent in its
    events, so a line's megabyte string must not become a megabyte message).
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        quote_chars: int = DEFAULT_QUOTE_CHARS,
        default_model: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        # run-batch only (`--model`, as FastDeploy's and vLLM's run-batch): a line with no
        # body.model gets this one. The Batch API leaves it None and keeps requiring body.model.
        self.default_model = default_model
        self.quote_chars = quote_chars
        self.model = model
        self.max_line_bytes = max_line_bytes
        # hash(custom_id) -> first line number. Hashes, not strings, bound the memory of a
        # million-line file; a 64-bit collision would at worst flag one false duplicate.
        # The newest ids sit in a dict (fast); past `spill_at` they move to a compact table.
        self._seen: dict[int, int] = {}
        self._older: IdTable | None = None
        self.spill_at = SPILL_AT

    def validate(self, raw: RawLine) -> ValidLine | LineIssue | None:
        """None for a blank line (skipped, still counted in line numbers)."""
        if raw.oversize:
            return LineIssue(raw.number, raw.start, raw.end, None, "line_too_large",
                             f"line {raw.number} is longer than the {self.max_line_bytes} byte limit")
        try:
            obj = _loads(raw.data)
        except orjson.JSONDecodeError as exc:
            return self._undecodable(raw, exc)
        # Fast path, taken by every well-formed line: exact-type checks only, no message
        # formatting. Anything it does not accept is re-judged by _check, which names the problem.
        if type(obj) is dict and len(obj) == 4:
            custom_id = obj.get("custom_id")
            url = obj.get("url")
            body = obj.get("body")
            if (
                type(custom_id) is str
                and custom_id
                and (key := hash(custom_id)) not in self._seen
                and (self._older is None or not self._older.get(key))
                and obj.get("method") == "POST"
                and type(url) is str
                and (url == self.endpoint if self.endpoint is not None else url in SUPPORTED_ENDPOINTS)
                and type(body) is dict
                and self.model is not None
                and body.get("model") == self.model
                and not body.get("stream")
            ):
                required = _REQUIRED_BODY_FIELD.get(url)
                value = body.get(required[0]) if required is not None else True
                if required is None or (type(value) in required[1] and value):
                    self._seen[key] = raw.number
                    if len(self._seen) >= self.spill_at:
                        self._spill()
                    return ValidLine(raw.number, raw.start, raw.end, custom_id, url, body)
        return self._check(raw, obj)

    def _spill(self) -> None:
        if self._older is None:
            self._older = IdTable()
        put = self._older.put
        for key, line in self._seen.items():
            put(key, line)
        self._seen = {}

    def _undecodable(self, raw: RawLine, exc: orjson.JSONDecodeError) -> LineIssue | None:
        n, s, e = raw.number, raw.start, raw.end
        data = raw.data
        if not data or data.isspace():
            return None
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return LineIssue(n, s, e, None, "invalid_utf8", f"line {n} is not valid UTF-8 (byte {uexc.start})")
        return LineIssue(n, s, e, None, "invalid_json", f"line {n} is not valid JSON: {cut(str(exc), self.quote_chars)}")

    def _check(self, raw: RawLine, obj: Any) -> ValidLine | LineIssue:
        """The full check of a parsed line, in the order that decides which problem is reported."""
        n, s, e = raw.number, raw.start, raw.end
        q = self.quote_chars
        if not isinstance(obj, dict):
            return LineIssue(n, s, e, None, "invalid_json",
                             f"line {n} must be a JSON object, got {_type_name(obj)}")

        custom_id = obj.get("custom_id")
        if custom_id is None or custom_id == "":
            return LineIssue(n, s, e, None, "missing_custom_id",
                             f"line {n} has no custom_id", "custom_id")
        if not isinstance(custom_id, str):
            return LineIssue(n, s, e, None, "invalid_custom_id",
                             f"line {n}: custom_id must be a string, got {_type_name(custom_id)}", "custom_id")
        key = hash(custom_id)
        first = self._seen.get(key) or (self._older.get(key) if self._older is not None else 0) or None
        if first is not None:
            return LineIssue(n, s, e, custom_id, "duplicate_custom_id",
                             f"line {n}: custom_id {quote(custom_id, q)} is already used on line {first}",
                             "custom_id")
        self._seen[key] = n
        if len(self._seen) >= self.spill_at:
            self._spill()

        method = obj.get("method")
        if method != "POST":
            return LineIssue(n, s, e, custom_id, "invalid_method",
                             f"line {n}: method must be \"POST\", got {_shown(method, q)}", "method")

        url = obj.get("url")
        if not isinstance(url, str) or not url:
            return LineIssue(n, s, e, custom_id, "missing_url", f"line {n} has no url", "url")
        if self.endpoint is not None:
            if url != self.endpoint:
                return LineIssue(n, s, e, custom_id, "mismatched_url",
                                 f"line {n}: url {quote(url, q)} differs from the batch endpoint "
                                 f"{quote(self.endpoint, q)}", "url")
        elif url not in SUPPORTED_ENDPOINTS:
            return LineIssue(n, s, e, custom_id, "unsupported_url",
                             f"line {n}: url {quote(url, q)} is not one of {sorted(SUPPORTED_ENDPOINTS)}", "url")

        body = obj.get("body")
        if not isinstance(body, dict):
            return LineIssue(n, s, e, custom_id, "invalid_body",
                             f"line {n}: body must be a JSON object, got {_type_name(body)}", "body")
        model = body.get("model")
        if model is None and self.default_model is not None:
            model = body["model"] = self.default_model  # the engine gets the filled body
        if not isinstance(model, str) or not model:
            return LineIssue(n, s, e, custom_id, "missing_model",
                             f"line {n}: body.model must be a non-empty string", "body.model")
        if self.model is None:
            self.model = model
        elif model != self.model:
            return LineIssue(n, s, e, custom_id, "mismatched_model",
                             f"line {n}: body.model {quote(model, q)} differs from the batch model "
                             f"{quote(self.model, q)}; "
                             "a batch runs one model", "body.model")
        required = _REQUIRED_BODY_FIELD.get(url)
        if required is not None:
            field, types = required
            value = body.get(field)
            if not isinstance(value, types) or (isinstance(value, list | str) and not value):
                return LineIssue(n, s, e, custom_id, "invalid_body",
                                 f"line {n}: body.{field} is required for {url} and must be a non-empty "
                                 f"{' or '.join(_type_name(t()) for t in types)}", f"body.{field}")
        if body.get("stream"):
            return LineIssue(n, s, e, custom_id, "invalid_body",
                             f"line {n}: body.stream is not supported in a batch", "body.stream")
        if len(obj) > 4 and (extra := sorted(set(obj) - {"custom_id", "method", "url", "body"})):
            listed = ", ".join(cut(name, q) for name in extra[:_MAX_LISTED_FIELDS])
            more = f" and {len(extra) - _MAX_LISTED_FIELDS} more" if len(extra) > _MAX_LISTED_FIELDS else ""
            return LineIssue(n, s, e, custom_id, "invalid_json",
                             f"line {n}: unknown field(s) {listed}{more}", cut(extra[0], q))
        return ValidLine(n, s, e, custom_id, url, body)
