"""Requests of the Batches API: the body of `POST /v1/batches` and the query of `GET /v1/batches`.

Limits are those docs/api.md gives for these two routes. Each check raises a `PydanticCustomError`
whose type is the error `code` the API answers with; the field's location becomes the error's `param`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from schemas.api_params import MAX_FILE_TTL_SECONDS, MIN_FILE_TTL_SECONDS
from schemas.inference import SUPPORTED_ENDPOINTS
from schemas.openai_objects import BatchStatus
from schemas.text import quote

BATCH_STATUSES: tuple[str, ...] = BatchStatus.__args__  # type: ignore[attr-defined]

MIN_WINDOW_HOURS = 24
MAX_WINDOW_HOURS = 336
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
# Bailian's extensions, carried in metadata, with their own (tighter) limits.
METADATA_FIELD_LIMITS: dict[str, int] = {"ds_name": 100, "ds_description": 200}
MAX_INPUT_REF = 2048
LIST_MAX_LIMIT = 100
LIST_DEFAULT_LIMIT = 20
LIST_MAX_FILE_IDS = 20
CREATE_TIME_FORMAT = "%Y%m%d%H%M%S"

# The `code` of each error these validators raise (the API answers with it).
VALIDATION_CODES: frozenset[str] = frozenset(
    {"invalid_value", "metadata_too_many_pairs", "metadata_key_too_long", "metadata_value_too_long"}
)

_WINDOW = re.compile(r"([1-9][0-9]{0,5})([hd])")
_CREATE_TIME = re.compile(r"[0-9]{14}")
# C0 controls other than tab, newline and carriage return: JSON spells each as six bytes (\u0000),
# which would let 16 metadata pairs alone outgrow the Batch object's size bound.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# No whitespace or control characters: a URL that has them is malformed, whatever a lenient parser makes of it.
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def parse_completion_window(value: str) -> int:
    """`24h` … `336h`, or the same span in days (`1d` … `14d`) -> hours. ValueError otherwise."""
    m = _WINDOW.fullmatch(value)
    if m is None:
        raise ValueError(
            f"completion_window must be an integer followed by 'h' or 'd' (e.g. '24h'), got {quote(value)}"
        )
    hours = int(m.group(1)) * (24 if m.group(2) == "d" else 1)
    if not MIN_WINDOW_HOURS <= hours <= MAX_WINDOW_HOURS:
        raise ValueError(
            f"completion_window must be between {MIN_WINDOW_HOURS}h and {MAX_WINDOW_HOURS}h (14d), got {quote(value)}"
        )
    return hours


def parse_create_time(value: str) -> int:
    """`yyyyMMddHHmmss` (UTC) -> epoch seconds. ValueError otherwise."""
    if not _CREATE_TIME.fullmatch(value):
        raise ValueError(f"expected yyyyMMddHHmmss (14 digits, UTC), got {quote(value)}")
    try:
        return int(datetime.strptime(value, CREATE_TIME_FORMAT).replace(tzinfo=UTC).timestamp())
    except ValueError as exc:
        raise ValueError(f"{quote(value)} is not a valid date and time: {exc}") from None


def is_url_input(value: str) -> bool:
    """True when `input_file_id` is an http(s) URL rather than a file id."""
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


NOT_HTTP = "it is not an http(s) URL"


def url_problem(url: str, *, max_chars: int = MAX_INPUT_REF) -> str | None:
    """Why `url` is not a well-formed http(s) URL with a host (and a valid port), or None.

    Only the URL's form is judged here; where it may point is the URL guard's business. The
    answer never quotes the URL's parts, so it can be shown whatever the URL holds.
    """
    if len(url) > max_chars:
        return f"it is longer than {max_chars} characters"
    if _URL_FORBIDDEN.search(url):
        return "it contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # a port out of range or not a number raises here
    except ValueError:
        return "it is not a valid URL (malformed host or port)"
    if parts.scheme not in ("http", "https"):
        return NOT_HTTP
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "its port must be between 1 and 65535"
    return None


def _invalid(code: str, message: str) -> PydanticCustomError:
    # No context: the message is final (user text in it must not be read as a template).
    return PydanticCustomError(code, message)


class OutputExpiresAfterRequest(BaseModel):
    """`output_expires_after` of `POST /v1/batches`: the output and error files expire `seconds` after
    their own creation (OpenAI's anchor is the file's `created_at`, not the batch's)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    anchor: Literal["created_at"] = Field(description="The only anchor is `created_at` (the file's).")
    seconds: int = Field(ge=MIN_FILE_TTL_SECONDS, le=MAX_FILE_TTL_SECONDS,
                         description="Seconds after the anchor, 3600 (1 hour) to 2592000 (30 days).")


class CreateBatchRequest(BaseModel):
    """`POST /v1/batches`. Unknown fields (newer SDK options) are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input_file_id: str = Field(
        min_length=1, max_length=MAX_INPUT_REF,
        description="A file uploaded with purpose `batch`, or an http(s) URL of a JSONL file.",
    )
    endpoint: str = Field(description="The endpoint every request line calls: " + ", ".join(sorted(SUPPORTED_ENDPOINTS)))
    completion_window: str = Field(description="`24h` to `336h`, an integer with unit `h` or `d` (`1d` … `14d`).")
    metadata: dict[str, str] | None = Field(
        None,
        description="At most 16 pairs; keys up to 64 characters, values up to 512. `ds_name` (up to 100) and "
        "`ds_description` (up to 200) name and describe the batch; `GET /v1/batches?ds_name=` filters on it.",
    )
    output_expires_after: OutputExpiresAfterRequest | None = Field(
        None, description="When the output and error files expire: `{\"anchor\": \"created_at\", \"seconds\": N}`, "
        "3600 <= N <= 2592000, counted from each file's `created_at`. Without it they never expire.",
    )

    @field_validator("input_file_id")
    @classmethod
    def _input(cls, value: str) -> str:
        if value.split(":", 1)[0].lower() in ("http", "https") and (problem := url_problem(value)) is not None:
            raise _invalid("invalid_value", f"input_file_id looks like a URL, but {problem}")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value not in SUPPORTED_ENDPOINTS:
            allowed = ", ".join(sorted(SUPPORTED_ENDPOINTS))
            raise _invalid("invalid_value", f"endpoint must be one of {allowed}, got {quote(value)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        try:
            parse_completion_window(value)
        except ValueError as exc:
            raise _invalid("invalid_value", str(exc)) from None
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > METADATA_MAX_PAIRS:
            raise _invalid("metadata_too_many_pairs",
                           f"metadata may have at most {METADATA_MAX_PAIRS} key-value pairs, got {len(value)}")
        for key, item in value.items():
            if key.startswith("$"):
                # MongoDB stores batch documents; it reserves "$"-prefixed names for operators.
                raise _invalid("invalid_value", f"metadata key {quote(key, METADATA_MAX_KEY)} must not start with '$'")
            if len(key) > METADATA_MAX_KEY:
                raise _invalid("metadata_key_too_long", f"metadata key {quote(key, METADATA_MAX_KEY)} is longer "
                               f"than {METADATA_MAX_KEY} characters")
            limit = METADATA_FIELD_LIMITS.get(key, METADATA_MAX_VALUE)
            if len(item) > limit:
                raise _invalid("metadata_value_too_long",
                               f"metadata value of {quote(key)} is longer than {limit} characters ({len(item)})")
            if _CONTROL.search(key) or _CONTROL.search(item):
                raise _invalid("invalid_value", f"metadata pair {quote(key)} contains a control character "
                               "(only tab, newline and carriage return are allowed)")
        return value

    @property
    def window_hours(self) -> int:
        return parse_completion_window(self.completion_window)

    @property
    def is_url(self) -> bool:
        return is_url_input(self.input_file_id)


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class BatchListQuery(BaseModel):
    """`GET /v1/batches` query: OpenAI's `after`/`limit` plus the Bailian filters.

    `create_after` / `create_before` become epoch seconds: `create_after <= created_at < create_before`.
    """

    model_config = ConfigDict(extra="ignore")

    after: str | None = Field(None, min_length=1, max_length=MAX_INPUT_REF,
                              description="A cursor: the `last_id` of the previous page.")
    limit: int = Field(LIST_DEFAULT_LIMIT, ge=1, le=LIST_MAX_LIMIT, description="How many batches, 1 to 100.")
    ds_name: str | None = Field(None, max_length=METADATA_FIELD_LIMITS["ds_name"],
                                description="Only batches whose `metadata.ds_name` contains this text.")
    input_file_ids: list[str] | None = Field(None, max_length=LIST_MAX_FILE_IDS,
                                             description="Comma-separated input file ids (or URLs), at most 20.")
    status: list[str] | None = Field(None, description="Comma-separated statuses.")
    create_after: int | None = Field(None, description="`yyyyMMddHHmmss` (UTC): created at or after.")
    create_before: int | None = Field(None, description="`yyyyMMddHHmmss` (UTC): created before.")

    @field_validator("input_file_ids", "status", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("status")
    @classmethod
    def _statuses(cls, value: list[str] | None) -> list[str] | None:
        for status in value or ():
            if status not in BATCH_STATUSES:
                raise _invalid("invalid_value",
                               f"unknown status {quote(status)}; expected any of {', '.join(BATCH_STATUSES)}")
        return value

    @field_validator("create_after", "create_before", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse_create_time(value)
            except ValueError as exc:
                raise _invalid("invalid_value", str(exc)) from None
        return value
