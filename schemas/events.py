"""Batch events: the CloudEvents 1.0 envelope on the events topic, and the webhook payload.

The topic is a public contract (docs/events.md): `type` is `batch.<status>` or
`batch.progress`, `data` is the Batch object exactly as the API returns it, `subject` and
the Kafka key are the batch id, and `id` is deterministic so a re-published event can be
recognised as the same one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal[
    "batch.created", "batch.in_progress", "batch.progress", "batch.finalizing", "batch.completed",
    "batch.failed", "batch.expired", "batch.cancelling", "batch.cancelled",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
# What a webhook endpoint gets unless it asks for more (OpenAI's batch webhook events).
DEFAULT_WEBHOOK_EVENTS: tuple[str, ...] = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
EVENT_SOURCE = "/offhours/batches"


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = EVENT_SOURCE
    type: str
    subject: str | None = None
    time: str | None = None
    datacontenttype: str = "application/json"
    data: dict[str, Any]


def event_id(batch_id: str, event_type: str, seq: int | None = None) -> str:
    """Deterministic: the same transition always yields the same id."""
    suffix = event_type.removeprefix("batch.")
    return f"{batch_id}.{suffix}" if seq is None else f"{batch_id}.{suffix}.{seq}"


def batch_event(event_type: str, batch: dict[str, Any], *, seq: int | None = None,
                at: float | None = None) -> CloudEvent:
    ts = datetime.fromtimestamp(at if at is not None else time.time(), tz=UTC)
    return CloudEvent(
        id=event_id(batch["id"], event_type, seq),
        type=event_type,
        subject=batch["id"],
        time=ts.isoformat().replace("+00:00", "Z"),
        data=batch,
    )


class WebhookEventData(BaseModel):
    id: str


class WebhookEvent(BaseModel):
    """OpenAI's webhook payload: `{"id":"evt_…","object":"event","type":…,"created_at":…,"data":{"id":…}}`."""

    id: str
    object: Literal["event"] = "event"
    type: str
    created_at: int
    data: WebhookEventData = Field(...)
