"""Batch events in, delivery documents out: which targets an event goes to, and the bytes it sends.

A delivery's id and body follow from the event alone (and the target), so a re-published event
gives the same documents: that is what lets the insert ignore what exists, and a resend carry the
same `webhook-id`. Nothing here sends or writes; the admission step (admission.py) does.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas.events import DEFAULT_WEBHOOK_EVENTS, CloudEvent, WebhookEvent
from services.notifier.deliveries import CALLBACK_TARGET, new_delivery, webhook_event_id, webhook_id
from services.notifier.endpoints import EndpointStore
from services.notifier.metrics import NotifierMetrics
from services.settings import Settings
from services.state.batches import BatchStore

log = logging.getLogger(__name__)

_PROJECT_CACHE = 10_000

Doc = dict[str, Any]


def callback_target(url: str) -> str:
    """The pool key of a callback URL: its host and port, so one slow callback host holds up only itself."""
    try:
        parts = urlsplit(url)
        return f"cb:{(parts.hostname or '').lower()}:{parts.port or ''}"
    except ValueError:
        return "cb:invalid"


def event_time(event: CloudEvent, default: float) -> float:
    if event.time:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(event.time.replace("Z", "+00:00")).timestamp()
    return default


def webhook_body(event: CloudEvent, batch_id: str, created_at: float) -> bytes:
    """OpenAI's payload, byte for byte the same for every target and every re-publication of the event."""
    payload = WebhookEvent(
        id=webhook_event_id(event.id), type=event.type, created_at=int(created_at), data={"id": batch_id}
    )
    return orjson.dumps(payload.model_dump(mode="json"))


def batch_id_of(event: CloudEvent) -> str | None:
    candidate = event.subject or event.data.get("id")
    return candidate if isinstance(candidate, str) and candidate else None


def callback_url_of(event: CloudEvent) -> str | None:
    metadata = event.data.get("metadata")
    url = metadata.get("callback_url") if isinstance(metadata, dict) else None
    return url if isinstance(url, str) and url.strip() else None


def parse_event(record: ConsumerRecord[bytes, bytes]) -> CloudEvent | None:
    try:
        return CloudEvent.model_validate(orjson.loads(record.value or b"null"))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        log.warning("skipping a record that is not a CloudEvent on %s at offset %d: %s", record.topic,
                    record.offset, str(exc)[:200])
        return None


class BatchProjects:
    """batch id -> project, from the batches collection. A batch never changes project, and a poll's
    events mostly name batches seen moments ago (created, in progress, completed): a small LRU saves
    most of the reads."""

    def __init__(self, batches: BatchStore, size: int = _PROJECT_CACHE) -> None:
        self._batches = batches
        self._size = size
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def of(self, batch_ids: Iterable[str]) -> dict[str, str]:
        """The project of each of these batches that exists."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for batch_id in dict.fromkeys(batch_ids):
            project = self._cache.get(batch_id)
            if project is None:
                missing.append(batch_id)
            else:
                found[batch_id] = project
                self._cache.move_to_end(batch_id)
        if missing:
            for batch_id, project in (await self._batches.projects_of(missing)).items():
                found[batch_id] = self._cache[batch_id] = project
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return found


class Intake:
    """The delivery documents of a poll of batch events: one per event and matching target."""

    def __init__(
        self, settings: Settings, endpoints: EndpointStore, batches: BatchStore, metrics: NotifierMetrics
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.projects = BatchProjects(batches)
        self.metrics = metrics

    async def deliveries_for(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[Doc], dict[str, Doc]]:
        """The delivery documents of these events, and the endpoint of each one that goes to an endpoint.

        Targets are the project's enabled endpoints subscribed to the event's type, and for a terminal
        event the batch's `metadata.callback_url`.
        """
        events: list[tuple[CloudEvent, str]] = []
        for record in records:
            event = parse_event(record)
            if event is None:
                continue
            batch_id = batch_id_of(event)
            if batch_id is None:
                log.warning("skipping event %s without a batch id (offset %d)", event.id, record.offset)
                continue
            events.append((event, batch_id))
        if not events:
            return [], {}
        projects = await self.projects.of(b for _, b in events)
        endpoints_by_project: defaultdict[str, list[Doc]] = defaultdict(list)
        for ep in await self.endpoints.enabled_for_projects(projects.values()):
            endpoints_by_project[ep["project"]].append(ep)

        now = time.time()
        horizon = self.settings.webhook_retry_horizon_seconds
        docs: dict[str, Doc] = {}  # by id: an event twice in one poll is one delivery
        endpoint_of: dict[str, Doc] = {}
        for event, batch_id in events:
            self.metrics.events.labels(event.type).inc()
            project = projects.get(batch_id)
            if project is None:
                log.warning("event %s names batch %s, which is not in the database; skipped", event.id, batch_id)
                continue
            body = webhook_body(event, batch_id, event_time(event, now))
            common = {"project": project, "source_event_id": event.id, "event_id": webhook_event_id(event.id),
                      "event_type": event.type, "batch_id": batch_id, "body": body, "now": now, "horizon_s": horizon}
            for ep in endpoints_by_project.get(project, ()):
                if event.type in ep["event_types"]:
                    doc = new_delivery(delivery_id=webhook_id(event.id, ep["_id"]), target=ep["_id"],
                                       endpoint_id=ep["_id"], callback_url=None, **common)
                    endpoint_of[doc["_id"]] = ep
                    docs[doc["_id"]] = doc
            callback = callback_url_of(event)
            if callback is not None and event.type in DEFAULT_WEBHOOK_EVENTS:
                doc = new_delivery(delivery_id=webhook_id(event.id, CALLBACK_TARGET), target=callback_target(callback),
                                   endpoint_id=None, callback_url=callback, **common)
                docs[doc["_id"]] = doc
        return list(docs.values()), endpoint_of
