"""The OpenAI objects of the Files and Batches API, field for field as openai-python has them.

Extensions (those of Alibaba Bailian and UCloud ModelVerse) ride in `metadata` (`ds_name`,
`ds_description`) or in fields the SDK ignores, so the official client parses every object.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.text import cut

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})

FilePurpose = Literal[
    "assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results",
    "vision", "user_data", "evals",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FileObject(_Wire):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(_Wire):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchError(_Wire):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(_Wire):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class BatchRequestCounts(_Wire):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(_Wire):
    cached_tokens: int = 0


class OutputTokensDetails(_Wire):
    reasoning_tokens: int = 0


class BatchUsage(_Wire):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class OutputExpiresAfter(_Wire):
    """When a batch's output and error files expire: `seconds` after each file's own `created_at`."""

    anchor: Literal["created_at"] = "created_at"
    seconds: int


class Batch(_Wire):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None
    # As given at create (OpenAI takes it on create; whether its Batch object returns it is not
    # documented, and openai-python's Batch type does not have it: the SDK keeps it as an extra field).
    output_expires_after: OutputExpiresAfter | None = None
    # Extension: the id of the newest batch created from this one by `POST /v1/batches/{id}/retry`.
    retried_by: str | None = None


T = TypeVar("T")


class ListEnvelope(_Wire, Generic[T]):
    """OpenAI's cursor page: `after` takes `last_id`; `has_more` says whether to ask again."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileList(ListEnvelope[FileObject]):
    pass


class BatchList(ListEnvelope[Batch]):
    pass


class Model(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "offhours"
    # Extension: which endpoints the model serves and how many live workers it has.
    endpoints: list[str] | None = None
    workers: int | None = None


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[Model]


def dump(obj: BaseModel) -> dict[str, Any]:
    """The JSON-ready form the API returns (None fields kept, as OpenAI returns nulls)."""
    return obj.model_dump(mode="json")


# --- the Batch object's size bound ----------------------------------------------------------------
# Every retrieve and list returns the Batch object, and every event carries it: whatever a client
# sent, it stays under this many bytes as compact UTF-8 JSON (orjson, what the API answers with).
BATCH_OBJECT_MAX_BYTES = 64 * 1024
# Left free below the bound, so a field added later cannot tip a full object over it unnoticed.
BATCH_OBJECT_SLACK_BYTES = 1024
MAX_BATCH_ERRORS = 100
# Bounds of the stored strings that come from a client's input (a line's model, error texts that
# quote lines); what the API validates at create (metadata, input_file_id) is bounded there.
MODEL_MAX_CHARS = 256
ERROR_MESSAGE_MAX_CHARS = 500
ERROR_FIELD_MAX_CHARS = 200


def _cut_text(value: Any, limit: int) -> Any:
    return cut(value, limit) if isinstance(value, str) else value


def bounded_model(model: Any) -> Any:
    """A batch's model as the object shows it: a client's overlong model name is cut."""
    return _cut_text(model, MODEL_MAX_CHARS)


def bounded_errors(errors: Any) -> list[dict[str, Any]]:
    """`errors.data` entries as the object shows them: at most MAX_BATCH_ERRORS, each text cut.

    The writers already cap and cut; this holds even for a document written by an older or a
    buggy writer, because the object is what every read and event carries.
    """
    out: list[dict[str, Any]] = []
    for entry in list(errors or ())[:MAX_BATCH_ERRORS]:
        if not isinstance(entry, dict):
            continue
        out.append({
            "code": _cut_text(entry.get("code"), ERROR_FIELD_MAX_CHARS),
            "message": _cut_text(entry.get("message"), ERROR_MESSAGE_MAX_CHARS),
            "param": _cut_text(entry.get("param"), ERROR_FIELD_MAX_CHARS),
            "line": entry.get("line") if isinstance(entry.get("line"), int) else None,
        })
    return out


def fit_batch_object(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` (a dumped Batch) with as many of its `errors.data` entries as fit the size bound.

    Everything else in the object is bounded where it is accepted (metadata and input_file_id at
    create, the model and error texts above), so only the number of error entries is left to fit:
    they take what the rest leaves, first entries first.
    """
    errors = obj.get("errors")
    if not errors or not errors.get("data"):
        return obj
    data = errors["data"]
    errors["data"] = []
    room = BATCH_OBJECT_MAX_BYTES - BATCH_OBJECT_SLACK_BYTES - len(orjson.dumps(obj))
    kept: list[Any] = []
    for entry in data:
        room -= len(orjson.dumps(entry)) + 1  # +1: the comma between entries
        if room < 0:
            break
        kept.append(entry)
    errors["data"] = kept
    return obj
