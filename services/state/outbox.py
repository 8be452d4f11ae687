"""The events outbox: sends the CloudEvents a batch write pushed into `outbox`, then pulls them.

Every writer calls `publish_outbox(doc)` with the document its `BatchStore` write returned. If the
process dies between the write and the send, the event waits in the document; the dispatcher runs
`republish_stale` periodically and sends it then. An event may therefore be sent twice (a crash
after the send but before the pull, or a republish racing the writer); its id is deterministic,
so consumers de-duplicate on it (docs/architecture.md, "Events and the outbox").

An event that can never be published — larger than the producer's limit even with its errors cut
(`schemas.events.fit_event`), or refused by the broker for its size — is set aside: logged, counted,
recorded on the batch under `events_set_aside`, and pulled from the outbox. Left there it would be
retried forever and hold back every later event of its batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from prometheus_client import CollectorRegistry, Counter

from events.bus import Producer
from events.topics import batch_events_topic
from schemas.events import CLOUDEVENTS_CONTENT_TYPE, RECORD_OVERHEAD_BYTES, event_size, fit_event
from services.settings import Settings
from services.state.batches import BatchStore

log = logging.getLogger(__name__)

EVENT_HEADERS = {"content-type": CLOUDEVENTS_CONTENT_TYPE}
# A broker outage must not hold an API request for the client's whole retry budget: the event
# waits in the outbox instead, and republish_stale sends it later.
DEFAULT_SEND_TIMEOUT_S = 10.0
# Refusals that sending again can never turn into a success.
_NEVER_FITS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
SET_ASIDE_FIELD = "events_set_aside"


def set_aside_key(event_id: str) -> str:
    """The field name of an event under `events_set_aside` (event ids hold dots, field paths cannot)."""
    return event_id.replace(".", "_").replace("$", "_")


class EventPublisher:
    """Sends outbox events to `{prefix}.batch.events` (key = batch id) through a started Producer."""

    def __init__(
        self, store: BatchStore, producer: Producer, settings: Settings, *,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S, registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.producer = producer
        self.topic = batch_events_topic(settings)
        self.send_timeout_s = send_timeout_s
        # The value's share of a record: the producer's limit covers key, headers and framing too.
        self.max_event_bytes = min(settings.kafka_max_message_bytes, producer.max_message_bytes) - RECORD_OVERHEAD_BYTES
        self.set_aside = Counter("offhours_events_set_aside", "Batch events that could never be published, by reason.",
                                 ("reason",), registry=registry or CollectorRegistry())

    async def publish_outbox(self, doc: Mapping[str, Any] | None) -> int:
        """Send each pending event of `doc` in order, then pull the sent ones; returns how many were sent.

        A send that fails or takes longer than `send_timeout_s` stops at that event (order within
        a batch matters), is logged, and leaves it and the later ones in the outbox for
        `republish_stale`; it is never raised, because the caller's write already succeeded and
        the event is not lost. An event that can never be sent is set aside and the next one sent.
        """
        if not doc:
            return 0
        batch_id = str(doc["_id"])
        sent: list[str] = []
        done: list[str] = []
        for event in doc.get("outbox") or ():
            try:
                value = self._value(event)
                async with asyncio.timeout(self.send_timeout_s):
                    await self.producer.send(self.topic, batch_id, value, EVENT_HEADERS)
            except _NEVER_FITS as exc:
                if not await self._set_aside(batch_id, event, exc):
                    break
                done.append(event["id"])
                continue
            except Exception:
                log.warning("publishing event %s failed; it stays in the outbox", event.get("id"), exc_info=True)
                break
            sent.append(event["id"])
            done.append(event["id"])
        if done:
            try:
                await self.store.pull_outbox(batch_id, done)
            except Exception:
                # Sent but not pulled: a later republish sends them again (same ids).
                log.warning("clearing sent events of %s from its outbox failed", batch_id, exc_info=True)
        return len(sent)

    def _value(self, event: Mapping[str, Any]) -> bytes:
        """The record value of `event`, fitted to the producer's limit; RecordTooLargeError when it cannot be."""
        value = orjson.dumps(event)
        if len(value) <= self.max_event_bytes:
            return value
        fitted = fit_event(event, self.max_event_bytes)
        if fitted is None:
            raise RecordTooLargeError(f"{len(value)} bytes even with its errors cut")
        return orjson.dumps(fitted)

    async def _set_aside(self, batch_id: str, event: Mapping[str, Any], exc: BaseException) -> bool:
        """Record on the batch that `event` will never be published; False when that write failed
        (the event then stays in the outbox, and the next republish tries again)."""
        event_id = str(event.get("id"))
        size = event_size(event)
        reason = "too_large" if isinstance(exc, RecordTooLargeError) else "refused"
        log.error("event %s (%s, %d bytes) can never be published (%s: %s); set aside so the events after it go on",
                  event_id, event.get("type"), size, exc.__class__.__name__, str(exc)[:200])
        record = {"type": event.get("type"), "bytes": size, "reason": reason, "at": time.time()}
        try:
            await self.store.update_fields(batch_id, {f"{SET_ASIDE_FIELD}.{set_aside_key(event_id)}": record})
        except Exception:
            log.warning("recording set-aside event %s failed; it stays in the outbox", event_id, exc_info=True)
            return False
        self.set_aside.labels(reason).inc()
        return True

    async def republish_stale(self, older_than_s: float = 5.0, limit: int = 500) -> int:
        """Send the events that have waited in an outbox for more than `older_than_s` seconds.

        Returns how many events were sent. The dispatcher calls this periodically. A batch whose
        events fail is left for the next round and never stops the others.
        """
        total = 0
        for doc in await self.store.with_stale_outbox(older_than_s, limit):
            try:
                total += await self.publish_outbox(doc)
            except Exception:
                log.warning("republishing the events of %s failed", doc.get("_id"), exc_info=True)
        return total
