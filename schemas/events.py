"""Batch events: the CloudEvents 1.0 envelope on the events topic, and the webhook payload.

The topic is a public contract (docs/events.md): `type` is `batch.<status>` or
`batch.progress`, `data` is the Batch object exactly as the API returns it, `subject` and
the Kafka key are the batch id, and `id` is deterministic so a re-published event can be
recognised as the same one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.text import DEFAULT_QUOTE_CHARS, cut

EventType = Literal[
    "batch.created", "batch.in_progress", "batch.progress", "batch.finalizing", "batch.completed",
    "batch.failed", "batch.expired", "batch.cancelling", "batch.cancelled",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
# What a webhook endpoint gets unless it asks for more (OpenAI's batch webhook events).
DEFAULT_WEBHOOK_EVENTS: tuple[str, ...] = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
EVENT_SOURCE = "/offhours/batches"

# The most one event may take, serialized, in a batch's outbox. A batch object stays far below it, so
# only a runaway errors list is ever cut; a document holding a few pending events then stays far from
# MongoDB's 16 MB document limit, whatever the input quoted.
OUTBOX_EVENT_MAX_BYTES = 128 * 1024
# A record's key (a batch id), headers and framing on top of its value, with margin.
RECORD_OVERHEAD_BYTES = 1024
# CloudEvents extension attribute (lowercase alphanumerics only) set on an event whose errors were cut.
TRUNCATED_ATTRIBUTE = "offhourstruncated"
ERRORS_LEFT_OUT_CODE = "errors_truncated"


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
                at: float | None = None, max_bytes: int = OUTBOX_EVENT_MAX_BYTES) -> CloudEvent:
    """The event of a batch change, its errors cut (`fit_event`) when it would exceed `max_bytes`.

    An event that cannot be fitted is returned whole: the publisher sets it aside rather than send it.
    """
    ts = datetime.fromtimestamp(at if at is not None else time.time(), tz=UTC)
    event = CloudEvent(
        id=event_id(batch["id"], event_type, seq),
        type=event_type,
        subject=batch["id"],
        time=ts.isoformat().replace("+00:00", "Z"),
        data=batch,
    )
    fitted = fit_event(event.model_dump(mode="json"), max_bytes)
    if fitted is None or not fitted.get(TRUNCATED_ATTRIBUTE):
        return event
    return CloudEvent.model_validate(fitted)


def event_size(event: Mapping[str, Any]) -> int:
    return len(orjson.dumps(event))


def fit_event(event: Mapping[str, Any], max_bytes: int, quote_chars: int = DEFAULT_QUOTE_CHARS) -> dict[str, Any] | None:
    """`event` (a CloudEvent as a dict) made to serialize within `max_bytes`, or None when it cannot be.

    As it is when it fits. Otherwise only `data.errors.data` gives way, since the rest of a batch
    object is small by construction: first each error's text is cut (`schemas.text.cut`), then the
    list keeps as many of its first entries as fit and ends with one `errors_truncated` entry saying
    how many were left out. A cut event carries `offhourstruncated: true`; the batch itself, read
    through the API, still has them all.
    """
    if event_size(event) <= max_bytes:
        return dict(event)
    data = event.get("data")
    errors = data.get("errors") if isinstance(data, Mapping) else None
    entries = errors.get("data") if isinstance(errors, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(errors, Mapping) or not isinstance(entries, list) or not entries:
        return None
    cut_entries = [_cut_error(entry, quote_chars) for entry in entries]
    keep = len(cut_entries)
    while True:
        shown = cut_entries[:keep]
        if keep < len(cut_entries):
            shown.append({
                "code": ERRORS_LEFT_OUT_CODE, "param": None, "line": None,
                "message": f"{len(cut_entries) - keep} more errors were left out of this event to keep it under "
                           f"{max_bytes} bytes; the batch object has them all.",
            })
        candidate = {**event, TRUNCATED_ATTRIBUTE: True, "data": {**data, "errors": {**errors, "data": shown}}}
        if event_size(candidate) <= max_bytes:
            return candidate
        if keep == 0:
            return None
        keep //= 2


def _cut_error(entry: Any, quote_chars: int) -> Any:
    if not isinstance(entry, Mapping):
        return cut(str(entry), quote_chars)
    return {key: cut(value, quote_chars) if isinstance(value, str) else value for key, value in entry.items()}


class WebhookEventData(BaseModel):
    id: str


class WebhookEvent(BaseModel):
    """OpenAI's webhook payload: `{"id":"evt_…","object":"event","type":…,"created_at":…,"data":{"id":…}}`."""

    id: str
    object: Literal["event"] = "event"
    type: str
    created_at: int
    data: WebhookEventData = Field(...)
