"""The consume loop: batch events from Kafka, committed in poll order once their deliveries are durable.

A poll's offsets are committed only after its deliveries are in MongoDB (admission.py): a notifier
killed before that leaves the events to be redelivered, and the insert ignores what exists. The
next poll is taken as soon as the current one's first attempts are over, so its insert overlaps
the next poll's attempts; at most one insert is outstanding, and commits keep poll order.

A commit that fails (a rebalance took the partition, the broker was away) is logged and counted and
the loop goes on: the records stay uncommitted, whoever owns their partition next admits them again,
and the insert ignores the deliveries that exist.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import ConsumerRecord

from events.bus import Consumer, consumer_options
from events.topics import batch_events_topic
from services.notifier.metrics import NotifierMetrics
from services.notifier.results import ResultWriter
from services.runtime.retry import Stopped, retry_until_stopped
from services.settings import Settings

# Events per poll: at 10 endpoints each, a poll's first attempts mostly end inside the first-attempt
# wait (bench/notifier.py: 200 left a third of them to a second write, 100 almost none).
_POLL_RECORDS = 100
# Attempt results waiting to be written, beyond which the consumer pauses: results must reach MongoDB
# well inside a claim's lease, or the scheduler would take the delivery for a crashed one and resend it.
_RESULTS_HIGH_WATER = 1000

Records = Sequence[ConsumerRecord[bytes, bytes]]
# (records, stop, attempted) -> True once the records' deliveries are in MongoDB (admission.py)
Admit = Callable[[Records, asyncio.Event, asyncio.Event], Awaitable[bool]]


def notifier_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}-notifier"


def notifier_consumer(settings: Settings) -> Consumer:
    options = consumer_options(settings)
    # A webhook is worth its latency: Tansu answers a fetch only when this wait is over even if
    # records arrived (Kafka answers at once); 50 ms costs an idle consumer 20 fetches a second.
    options["fetch_max_wait_ms"] = 50
    return Consumer(settings, [batch_events_topic(settings)], group_id=notifier_group(settings),
                    client_id="offhours-notifier", **options)


async def consume(
    consumer: Consumer, admit: Admit, results: ResultWriter, stop: asyncio.Event, metrics: NotifierMetrics
) -> None:
    """Poll, admit each poll, commit polls in order, until `stop` is set (the insert in hand is finished)."""
    Handling = tuple[asyncio.Task[bool], list[ConsumerRecord[bytes, bytes]]]
    writing: Handling | None = None
    current: Handling | None = None

    async def admitted(records: Records, attempted: asyncio.Event) -> bool:
        # Retried in place (a failed read of MongoDB), not skipped: nothing is committed past these records.
        try:
            return await retry_until_stopped(functools.partial(admit, records, stop, attempted),
                                             what="creating deliveries", stop=stop, first_delay=0.2, max_delay=30.0)
        except Stopped:
            return False

    async def committed(handling: Handling) -> bool:
        task, done_records = handling
        if not await task:
            return False  # not committed: the next notifier handles these records again, harmlessly
        if not await consumer.try_commit(done_records):
            metrics.commit_failures.inc()
        return True

    try:
        while not stop.is_set():
            # Backpressure: give the result writer time to catch up before taking more work.
            while results.backlog > _RESULTS_HIGH_WATER and not stop.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            records = await consumer.getmany(timeout_ms=500, max_records=_POLL_RECORDS)
            current = None
            if records:
                attempted = asyncio.Event()
                current = (asyncio.create_task(admitted(records, attempted)), records)
                signal = asyncio.create_task(attempted.wait())
                await asyncio.wait([current[0], signal], return_when=asyncio.FIRST_COMPLETED)
                signal.cancel()
            if writing is not None:
                previous, writing = writing, None
                if not await committed(previous):
                    return
            if current is not None:
                if current[0].done():
                    if not await committed(current):
                        return
                else:
                    writing = current
                current = None
        if writing is not None:  # stopping: finish the insert in hand, so nothing is resent
            previous, writing = writing, None
            await committed(previous)
    finally:
        leftovers = [h[0] for h in (writing, current) if h is not None]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
