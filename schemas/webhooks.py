"""Webhook endpoints and deliveries: the API objects, their request bodies, and the stored delivery.

The endpoint object is openai-python's `WebhookEndpoint` / `WebhookEndpointWithSecret` field for
field (`client.webhooks.create/retrieve/update/list/delete/rotate_secret/test` work unchanged), plus
offhours' extensions the SDK ignores: `description`, `enabled`. Requests accept `events` as another
name for `event_types`. Deliveries (`webhook_delivery`) are an offhours extension: OpenAI has no
deliveries API. docs/webhooks.md is the user-facing description.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.events import EVENT_TYPES
from schemas.openai_objects import ListEnvelope

MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 256
MAX_DESCRIPTION_LENGTH = 1024
LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 100

DeliveryStatus = Literal["pending", "delivered", "dead"]
AttemptOutcome = Literal["succeeded", "failed"]


def _invalid(code: str, message: str) -> PydanticCustomError:
    # No context: the message is final (user text in it must not be read as a template).
    return PydanticCustomError(code, message)


def check_webhook_url(value: str) -> str:
    """Syntax only: an absolute http(s) URL with a host. Where it points is url_guard's business."""
    if len(value) > MAX_URL_LENGTH:
        raise _invalid("invalid_url", f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise _invalid("invalid_url", f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid("invalid_url", f"url must be an http:// or https:// URL, got {value[:100]!r}")
    if not parts.hostname:
        raise _invalid("invalid_url", f"url has no host: {value[:100]!r}")
    if any(c.isspace() for c in value):
        raise _invalid("invalid_url", "url must not contain whitespace")
    return value


def check_event_types(value: list[str]) -> list[str]:
    if not value:
        raise _invalid("invalid_value", "at least one event type is required")
    unknown = [t for t in value if t not in EVENT_TYPES]
    if unknown:
        raise _invalid(
            "invalid_value",
            f"unknown event type {unknown[0]!r}; expected any of {', '.join(EVENT_TYPES)}",
        )
    return list(dict.fromkeys(value))  # de-duplicated, order kept


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI does (newer SDKs may send options we do not know).
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _one_name_for_events(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event_types" in data and "events" in data:
            raise _invalid("invalid_value", "give either event_types or events (the same field), not both")
        return data


class CreateWebhookEndpointRequest(_Request):
    """`POST /v1/webhook_endpoints`. Only `url` is required; `event_types` defaults to the terminal events."""

    url: str
    event_types: list[str] | None = Field(None, validation_alias=AliasChoices("event_types", "events"))
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_LENGTH)
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_webhook_url(value)

    @field_validator("event_types")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_event_types(value)


class UpdateWebhookEndpointRequest(_Request):
    """`POST /v1/webhook_endpoints/{id}`: the fields given replace the stored ones."""

    url: str | None = None
    event_types: list[str] | None = Field(None, validation_alias=AliasChoices("event_types", "events"))
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_LENGTH)
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook_url(value)

    @field_validator("event_types")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_event_types(value)


class RotateSecretRequest(_Request):
    """`POST …/rotate_secret`. Absent: the old secret keeps signing for the configured grace period
    (`webhook_secret_grace_seconds`, 24 h by default); false: it stops at once; true: 24 h."""

    keep_old_secret_active_for_24_hours: bool | None = None


class TestWebhookEndpointRequest(_Request):
    """`POST /v1/webhook_endpoints/{id}/test`: send one signed sample event now."""

    event_type: str

    @field_validator("event_type")
    @classmethod
    def _event_type(cls, value: str) -> str:
        check_event_types([value])
        return value


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    after: str | None = Field(None, min_length=1, max_length=256)
    limit: int = Field(LIST_DEFAULT_LIMIT, ge=1, le=LIST_MAX_LIMIT)


class DeliveryListQuery(ListQuery):
    """`GET /v1/webhook_deliveries` (and the per-endpoint listing): optional filters."""

    status: DeliveryStatus | None = None
    batch_id: str | None = Field(None, min_length=1, max_length=256)
    endpoint_id: str | None = Field(None, min_length=1, max_length=256)


# --- responses --------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WebhookEndpoint(_Wire):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int | None = None
    url: str
    name: str
    event_types: list[str]
    signing_secret_hint: str | None = None
    # offhours extensions
    description: str | None = None
    enabled: bool = True


class WebhookEndpointWithSecret(WebhookEndpoint):
    """Returned by create and rotate_secret only: the one time the secret is shown."""

    signing_secret: str


class DeletedWebhookEndpoint(_Wire):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointTestResult(_Wire):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    event_type: str
    status_code: int
    success: Literal[True] = True
    webhook_endpoint_id: str


class WebhookEventTypeList(_Wire):
    object: Literal["list"] = "list"
    data: list[str]


class CallbackSecret(_Wire):
    """The project's secret for one-off `metadata.callback_url` deliveries (offhours extension)."""

    object: Literal["webhook_callback_secret"] = "webhook_callback_secret"
    signing_secret: str
    created_at: int
    previous_secret_expires_at: int | None = None


class DeliveryAttempt(_Wire):
    attempt: int
    started_at: float
    outcome: AttemptOutcome
    latency_ms: int
    response_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    # When the next attempt is due; None after a success or the last attempt.
    next_retry_at: int | None = None


class WebhookDelivery(_Wire):
    """One event for one target. `id` is the `webhook-id` header: the same on every (re)send."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint_id: str | None = None
    # Set for a one-off `metadata.callback_url` delivery (endpoint_id is then None).
    callback_url: str | None = None
    event_id: str
    event_type: str
    batch_id: str
    status: DeliveryStatus
    created_at: int
    delivered_at: int | None = None
    dead_at: int | None = None
    next_retry_at: int | None = None
    attempt_count: int = 0
    last_error: str | None = None
    # The most recent attempts, oldest first (the stored history is capped).
    attempts: list[DeliveryAttempt] = Field(default_factory=list)


class WebhookEndpointList(ListEnvelope[WebhookEndpoint]):
    pass


class WebhookDeliveryList(ListEnvelope[WebhookDelivery]):
    pass
