"""The notifier: batch events in, signed webhooks out, nothing lost across crashes.

`Notifier` puts the parts together and runs their three loops in one process:
- consume (consume.py): polls `{prefix}.batch.events` in group `{prefix}-notifier`; each poll's
  events become deliveries (intake.py), which are attempted at once where their target has room
  and inserted in one bulk write (admission.py); only then is the offset committed;
- schedule (schedule.py): claims due deliveries (retries, the overflow, lapsed claims) for the pool;
- record (results.py): writes the results of attempts that ended after their delivery was inserted.
One attempt (attempts.py) resolves the target's URL and secrets, signs, sends and sets the next retry.

A notifier SIGKILLed at any point loses nothing: events whose deliveries were not inserted are
redelivered by Kafka (the insert ignores deliveries that exist), and a delivery claimed but not
finished is claimed again when its lease lapses. Both resend with the same `webhook-id`: delivery
is at-least-once, and receivers de-duplicate on that header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry
from pymongo.asynchronous.database import AsyncDatabase

from events.topics import batch_events_topic, ensure_topics
from services.notifier.admission import Admission
from services.notifier.attempts import Attempts, Claims
from services.notifier.consume import consume, notifier_consumer, notifier_group
from services.notifier.deliveries import DeliveryStore
from services.notifier.endpoints import EndpointStore
from services.notifier.intake import Intake
from services.notifier.metrics import NotifierMetrics
from services.notifier.pool import DeliveryPool
from services.notifier.results import ResultWriter
from services.notifier.schedule import Alarm, Scheduler
from services.notifier.secrets import SecretBox
from services.notifier.sender import Sender
from services.settings import Settings
from services.state.batches import BatchStore

log = logging.getLogger(__name__)


class Notifier:
    def __init__(
        self,
        settings: Settings,
        db: AsyncDatabase[Any],
        *,
        box: SecretBox | None = None,
        registry: CollectorRegistry | None = None,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.box = box or SecretBox.from_settings(settings)
        self.endpoints = EndpointStore(db, self.box)
        self.deliveries = DeliveryStore(db, ended_ttl_s=settings.webhook_delivery_ttl_seconds)
        self.batches = BatchStore(db)
        self.sender = Sender.from_settings(settings)
        self.pool = DeliveryPool(
            per_target=settings.webhook_max_concurrency_per_endpoint,
            per_host=settings.webhook_max_concurrency_per_host,
            overall=settings.webhook_max_concurrency,
            queued_per_target=settings.webhook_max_queued_per_endpoint,
            queued_overall=settings.webhook_max_queued,
        )
        self.metrics = NotifierMetrics(registry or CollectorRegistry())
        self.metrics.in_pool.set_function(lambda: self.pool.queued)
        self.claims = Claims(settings, instance)
        self.results = ResultWriter(self.deliveries)
        alarm = Alarm()
        self.attempts = Attempts(settings, endpoints=self.endpoints, deliveries=self.deliveries, box=self.box,
                                 sender=self.sender, claims=self.claims, metrics=self.metrics, on_retry=alarm.wake_at)
        self.scheduler = Scheduler(settings, deliveries=self.deliveries, pool=self.pool, claims=self.claims,
                                   attempts=self.attempts, results=self.results, alarm=alarm)
        self.admission = Admission(intake=Intake(settings, self.endpoints, self.batches, self.metrics),
                                   deliveries=self.deliveries, pool=self.pool, claims=self.claims,
                                   attempts=self.attempts, results=self.results, alarm=alarm, metrics=self.metrics)

    async def prepare(self) -> None:
        await self.endpoints.ensure_indexes()
        await self.deliveries.ensure_indexes()
        await ensure_topics(self.settings, [batch_events_topic(self.settings)])
        await self.sender.start()

    async def close(self) -> None:
        """Give in-flight deliveries one timeout to finish and their results time to be recorded; the
        claims of whatever is left lapse, and another notifier sends those."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pool.wait_idle(), self.settings.webhook_timeout_seconds)
        await self.pool.close()
        await self.results.drain(10.0)
        await self.sender.close()

    async def handle_records(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], stop: asyncio.Event,
        attempted: asyncio.Event | None = None,
    ) -> bool:
        """Turn these events into deliveries, durably; True once they are all in MongoDB (see Admission.admit)."""
        return await self.admission.admit(records, stop, attempted)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, schedule and record until `stop` is set (or a loop fails: then it sets `stop` and
        re-raises), then shut down cleanly."""
        consumer = notifier_consumer(self.settings)
        await consumer.start()
        log.info("notifier running (topic %s, group %s)", consumer.topics[0], notifier_group(self.settings))
        tasks = [
            asyncio.create_task(consume(consumer, self.handle_records, self.results, stop, self.metrics), name="notifier-consume"),
            asyncio.create_task(self.scheduler.run(stop), name="notifier-schedule"),
            asyncio.create_task(self.results.run(), name="notifier-record"),
        ]
        try:
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            for task in done:
                if task is not stopping:
                    task.result()  # a loop only ends early by raising: surface it
        finally:
            stop.set()  # also when a loop failed: the others wind down the same way
            # Both loops see `stop`; the consumer finishes the poll in hand first (bounded wait).
            await asyncio.wait(tasks[:2], timeout=self.settings.webhook_timeout_seconds + 15.0)
            for task in tasks[:2]:
                task.cancel()
            await asyncio.gather(*tasks[:2], return_exceptions=True)
            await consumer.stop()
            await self.close()  # the record loop still runs: in-flight results get written
            tasks[2].cancel()
            await asyncio.gather(tasks[2], return_exceptions=True)
            log.info("notifier stopped")
