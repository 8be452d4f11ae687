"""The OpenAI objects of the Files and Batches API, field for field as openai-python has them.

Extensions (those of Alibaba Bailian and UCloud ModelVerse) ride in `metadata` (`ds_name`,
`ds_description`) or in fields the SDK ignores, so the official client parses every object.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

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
