"""The events outbox: sends the CloudEvents a batch write pushed into `outbox`, then pulls them.

Every writer calls `publish_outbox(doc)` with the document its `BatchStore` write returned. If the
process dies between the write and the send, the event waits in the document; the dispatcher runs
`republish_stale` periodically and sends it then. An event may therefore be sent twice (a crash
after the send but before the pull, or a republish racing the writer); its id is deterministic,
so consumers de-duplicate on it (docs/architecture.md, "Events and the outbox").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from events.bus import Producer
from events.topics import batch_events_topic
from schemas.events import CLOUDEVENTS_CONTENT_TYPE
from services.settings import Settings
from services.state.batches import BatchStore

log = logging.getLogger(__name__)

EVENT_HEADERS = {"content-type": CLOUDEVENTS_CONTENT_TYPE}
# A broker outage must not hold an API request for the client's whole retry budget: the event
# waits in the outbox instead, and republish_stale sends it later.
DEFAULT_SEND_TIMEOUT_S = 10.0


class EventPublisher:
    """Sends outbox events to `{prefix}.batch.events` (key = batch id) through a started Producer."""

    def __init__(
        self, store: BatchStore, producer: Producer, settings: Settings, *, send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S
    ) -> None:
        self.store = store
        self.producer = producer
        self.topic = batch_events_topic(settings)
        self.send_timeout_s = send_timeout_s

    async def publish_outbox(self, doc: Mapping[str, Any] | None) -> int:
        """Send each pending event of `doc` in order, then pull the sent ones; returns how many were sent.

        A send that fails or takes longer than `send_timeout_s` stops at that event (order within
        a batch matters), is logged, and leaves it and the later ones in the outbox for
        `republish_stale`; it is never raised, because the caller's write already succeeded and
        the event is not lost.
        """
        if not doc:
            return 0
        batch_id = str(doc["_id"])
        sent: list[str] = []
        for event in doc.get("outbox") or ():
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.producer.send(self.topic, batch_id, orjson.dumps(event), EVENT_HEADERS)
            except Exception:
                log.warning("publishing event %s failed; it stays in the outbox", event.get("id"), exc_info=True)
                break
            sent.append(event["id"])
        if sent:
            try:
                await self.store.pull_outbox(batch_id, sent)
            except Exception:
                # Sent but not pulled: a later republish sends them again (same ids).
                log.warning("clearing sent events of %s from its outbox failed", batch_id, exc_info=True)
        return len(sent)

    async def republish_stale(self, older_than_s: float = 5.0, limit: int = 500) -> int:
        """Send the events that have waited in an outbox for more than `older_than_s` seconds.

        Returns how many events were sent. The dispatcher calls this periodically.
        """
        total = 0
        for doc in await self.store.with_stale_outbox(older_than_s, limit):
            total += await self.publish_outbox(doc)
        return total
