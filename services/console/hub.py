"""One Kafka reader of the batch events per api process, fanned out to the console's live streams.

Every open console page holds one SSE stream (`/console/events`); a consumer per stream would cost a
broker connection each and, with a group, a rebalance per page load. Instead the process reads
`{prefix}.batch.events` once, outside any consumer group (it assigns itself every partition and
starts at the end: a page loads the current state from the API and needs only what changes after),
and hands each event to the streams of the batch's project.

The events do not carry the project (docs/events.md), so the hub asks the batch store once per
batch and remembers the answer: a batch never changes project.

A stream that cannot keep up (its queue is full) is not allowed to hold the others back: it gets a
`resync` marker instead of the events it missed, and the page reloads what it shows from the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from events.bus import consumer_options
from events.topics import batch_events_topic, ensure_topics
from services.settings import Settings
from services.state.batches import BatchStore

log = logging.getLogger(__name__)

# What a stream's queue holds besides events: "you missed some, reload" and "the server is stopping".
RESYNC = "resync"
CLOSED = "closed"
QUEUE_SIZE = 256
# Batch id -> project answers kept; an evicted one only costs another lookup.
PROJECT_CACHE_SIZE = 10_000
# Events written before the hub started are older than anything a page could be missing (it loaded
# after); the margin covers clocks of other hosts. This guards against a broker whose end offsets
# are not where they should be (infra/README.md: Tansu), which would otherwise replay old history.
STALE_MARGIN_SECONDS = 60.0
# How often the partition list is re-read, so partitions an operator adds are followed too.
PARTITION_REFRESH_SECONDS = 60.0


@dataclass(eq=False)
class Subscription:
    """One live stream: the project it may see and the queue it reads."""

    project: str
    queue: asyncio.Queue[dict[str, Any] | str] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    missed: bool = False

    def offer(self, item: dict[str, Any] | str) -> None:
        if self.missed and item not in (RESYNC, CLOSED):
            return  # a resync is pending: what it reloads includes this event
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.missed = True

    def take_resync(self) -> bool:
        """True once after events were dropped: the stream sends `resync` and starts afresh."""
        if self.missed and self.queue.empty():
            self.missed = False
            return True
        return False


class EventHub:
    """Reads the batch events topic and offers each event to the subscriptions of its project."""

    def __init__(self, settings: Settings, store: BatchStore) -> None:
        self._settings = settings
        self._store = store
        self._topic = batch_events_topic(settings)
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._projects: OrderedDict[str, str] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self.ready = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        await ensure_topics(self._settings, [self._topic])
        options = consumer_options(self._settings)
        for group_only in ("session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms"):
            options.pop(group_only)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id="offhours-console",
            group_id=None,  # no group: every api process sees every event, and no rebalances
            enable_auto_commit=False,
            **options,
        )
        await self._consumer.start()
        self._started_at = time.time()
        try:
            await self._assign(at_end=True)
        except BaseException:
            await self._consumer.stop()
            raise
        self._task = asyncio.create_task(self._run(), name="console-event-hub")
        self.ready.set()

    async def stop(self) -> None:
        self.close_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def close_streams(self) -> None:
        """Ends every open stream (server shutdown: an SSE response never ends by itself)."""
        for subs in self._subscriptions.values():
            for sub in subs:
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(CLOSED)

    @contextlib.contextmanager
    def subscribe(self, project: str) -> Iterator[Subscription]:
        sub = Subscription(project)
        self._subscriptions.setdefault(project, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subscriptions.get(project)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscriptions[project]

    def stream_count(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    async def _assign(self, *, at_end: bool) -> None:
        assert self._consumer is not None
        await self._consumer.topics()  # a metadata round trip, so the partition list is current
        partitions = self._consumer.partitions_for_topic(self._topic) or set()
        wanted = {TopicPartition(self._topic, p) for p in partitions}
        current = set(self._consumer.assignment())
        if wanted == current:
            return
        self._consumer.assign(sorted(wanted))
        if at_end:
            await self._consumer.seek_to_end(*wanted)
        else:
            # Kept partitions keep their position; new ones are read from their start, since they
            # were created after the hub started and hold nothing older.
            for tp in wanted - current:
                await self._consumer.seek_to_beginning(tp)

    async def _run(self) -> None:
        assert self._consumer is not None
        next_refresh = time.monotonic() + PARTITION_REFRESH_SECONDS
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000, max_records=500)
                records = [r for rs in batches.values() for r in rs]
                if records:
                    await self._dispatch(records)
                if time.monotonic() > next_refresh:
                    next_refresh = time.monotonic() + PARTITION_REFRESH_SECONDS
                    await self._assign(at_end=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A live view is best effort: a broker or database hiccup must not end the hub. The
                # pages are told to reload, so nothing they show stays wrong.
                log.warning("console event hub: reading the batch events failed; retrying", exc_info=True)
                self._resync_all()
                await asyncio.sleep(1.0)

    def _resync_all(self) -> None:
        for subs in self._subscriptions.values():
            for sub in subs:
                sub.offer(RESYNC)

    async def _dispatch(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        events: list[dict[str, Any]] = []
        for record in records:
            event = _decode(record.value)
            if event is not None and not self._stale(event):
                events.append(event)
        if not events or not self._subscriptions:
            return
        projects = await self._projects_of({str(e["subject"]) for e in events})
        for event in events:
            project = projects.get(str(event["subject"]))
            for sub in self._subscriptions.get(project or "", ()):
                sub.offer(event)

    def _stale(self, event: dict[str, Any]) -> bool:
        written = _epoch(event.get("time"))
        return written is not None and written < self._started_at - STALE_MARGIN_SECONDS

    async def _projects_of(self, batch_ids: set[str]) -> dict[str, str]:
        known = {b: self._projects[b] for b in batch_ids if b in self._projects}
        missing = batch_ids - known.keys()
        if missing:
            found = await self._store.projects_of(missing)
            for batch_id, project in found.items():
                self._projects[batch_id] = project
            known.update(found)
            while len(self._projects) > PROJECT_CACHE_SIZE:
                self._projects.popitem(last=False)
        for batch_id in known:
            if batch_id in self._projects:
                self._projects.move_to_end(batch_id)
        return known


def _decode(value: bytes | None) -> dict[str, Any] | None:
    """The CloudEvent, or None for a message that is not one (the topic is public: be lenient)."""
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        return None
    if not isinstance(event.get("subject"), str) or not isinstance(event.get("type"), str):
        return None
    return event


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
