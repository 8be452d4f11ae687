"""Query and form parameters of the HTTP API: the one definition the handlers validate with
and the OpenAPI document is built from.

Values arrive as strings (query string, multipart fields); pydantic's lax mode converts them.
A validation error names the parameter by its wire name (aliases such as
`expires_after[seconds]`), which becomes the `param` of the 400 answer.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.openai_objects import FilePurpose

# Ids this service mints are `file-<24 hex>`; the pattern is looser so ids minted elsewhere
# (another deployment, a future format) still page correctly.
FILE_ID_PATTERN = r"^file-[A-Za-z0-9_-]{1,64}$"
# OpenAI's bounds for `expires_after[seconds]`: one hour to thirty days.
MIN_FILE_TTL_SECONDS = 3600
MAX_FILE_TTL_SECONDS = 2_592_000


class PageParams(BaseModel):
    """OpenAI cursor paging: `after` = the `last_id` of the previous page."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    after: str | None = Field(None, description="A cursor: the `last_id` of the previous page.")
    limit: int = Field(20, ge=1, le=100, description="How many objects to return, 1 to 100.")
    order: Literal["asc", "desc"] = Field("desc", description="By creation time: `desc` = newest first.")


class FileListParams(PageParams):
    after: str | None = Field(None, pattern=FILE_ID_PATTERN, description="The `last_id` of the previous page.")
    purpose: FilePurpose | None = Field(None, description="Only files with this purpose.")


class FileUploadFields(BaseModel):
    """The small form fields of `POST /v1/files`, as the openai SDK sends them."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    purpose: FilePurpose = Field(description="What the file is for; `batch` files are checked to be JSONL.")
    expires_after_anchor: Literal["created_at"] | None = Field(
        None, alias="expires_after[anchor]", description="The only anchor is `created_at`."
    )
    expires_after_seconds: int | None = Field(
        None,
        alias="expires_after[seconds]",
        ge=MIN_FILE_TTL_SECONDS,
        le=MAX_FILE_TTL_SECONDS,
        description="Seconds after the anchor at which the file expires (3600 to 2592000).",
    )

    @model_validator(mode="after")
    def _expiry_is_complete(self) -> Self:
        if (self.expires_after_anchor is None) != (self.expires_after_seconds is None):
            missing = "expires_after[seconds]" if self.expires_after_seconds is None else "expires_after[anchor]"
            raise ValueError(f"{missing} is required when the other expires_after field is given")
        return self


class FileUploadForm(FileUploadFields):
    """The whole multipart form (for the OpenAPI document; the file part itself is streamed)."""

    file: bytes = Field(description="The file's bytes, with its name in the part's filename.")
