"""The notifier: batch events in, signed webhooks out, nothing lost across crashes.

Three loops share one process:
- consume (`{prefix}.batch.events`, group `{prefix}-notifier`): each poll's events are matched to
  the project's enabled endpoints (and a terminal event to the batch's `metadata.callback_url`),
  giving one delivery per (event, target); those that exist already (a re-published event) are
  dropped before anything is sent. Deliveries whose target has room are attempted at once;
  after at most FIRST_ATTEMPT_WAIT_S all of them are inserted in one bulk write — those whose first
  attempt finished with its outcome, those still in flight claimed by this process — and only then
  is the offset committed.
- schedule (timer): claims due deliveries (retries, the overflow, and deliveries whose claim
  lapsed because their notifier died) and hands them to the pool.
- record: results of attempts that ended after their delivery was written are written in bulk,
  each conditioned on the claim that made it.

A notifier SIGKILLed at any point loses nothing: events whose deliveries were not inserted are
redelivered by Kafka (the insert ignores deliveries that exist), and a delivery claimed but not
finished is claimed again when its lease lapses. Both resend with the same `webhook-id`: delivery
is at-least-once, and receivers de-duplicate on that header.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
import time
from collections import Counter as Tally
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError
from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Consumer
from events.topics import batch_events_topic, ensure_topics
from schemas.events import DEFAULT_WEBHOOK_EVENTS, CloudEvent, WebhookEvent
from services.notifier.deliveries import (
    CALLBACK_TARGET,
    DeliveryStore,
    finish_update,
    new_delivery,
    next_attempt_after_failure,
    webhook_event_id,
    webhook_id,
    with_outcome,
)
from services.notifier.endpoints import EndpointStore, active_secrets, callback_owner
from services.notifier.pool import DeliveryPool
from services.notifier.secrets import SecretBox, SecretKeyError
from services.notifier.sender import Sender, SendResult
from services.notifier.signing import webhook_headers
from services.settings import Settings
from services.state.batches import BatchStore

log = logging.getLogger(__name__)

# How long the consumer waits for first attempts so that their outcome rides in the delivery's insert.
FIRST_ATTEMPT_WAIT_S = 1.0
# Events per poll: at 10 endpoints each, a poll's first attempts mostly end inside FIRST_ATTEMPT_WAIT_S
# (bench/notifier.py: 200 left a third of them to a second write, 100 almost none).
_POLL_RECORDS = 100
# Attempt results waiting to be written, beyond which the consumer pauses: results must reach MongoDB
# well inside a claim's lease, or the scheduler would take the delivery for a crashed one and resend it.
_RESULTS_HIGH_WATER = 1000
_RESULT_BATCH = 500
_PROJECT_CACHE = 10_000
_MAX_BACKOFF_S = 30.0

T = TypeVar("T")


@dataclass(eq=False)
class _FirstAttempt:
    doc: dict[str, Any]
    claim: str
    endpoint: Mapping[str, Any] | None
    # (attempt record, next retry or None, finished at), set when the attempt ends
    outcome: asyncio.Future[tuple[dict[str, Any], float | None, float]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def notifier_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}-notifier"


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


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter("offhours_notifier_events", "Batch events consumed, by type.", ("type",),
                              registry=registry)
        self.deliveries_created = Counter("offhours_notifier_deliveries_created",
                                          "Delivery documents created (one per event and target).", registry=registry)
        self.attempts = Counter("offhours_notifier_attempts", "Delivery attempts, by outcome.", ("outcome",),
                                registry=registry)
        self.finished = Counter("offhours_notifier_deliveries_finished", "Deliveries that reached a final status.",
                                ("status",), registry=registry)
        self.attempt_seconds = Histogram("offhours_notifier_attempt_seconds", "Duration of one HTTP attempt.",
                                         registry=registry,
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.delivery_seconds = Histogram("offhours_notifier_delivery_seconds",
                                          "From delivery creation to the successful attempt.", registry=registry,
                                          buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400))
        self.in_pool = Gauge("offhours_notifier_deliveries_in_memory",
                             "Deliveries waiting for or holding a send slot in this process.", registry=registry)


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
        self.deliveries = DeliveryStore(db)
        self.batches = BatchStore(db)
        self.sender = Sender.from_settings(settings)
        self.pool = DeliveryPool(
            per_target=settings.webhook_max_concurrency_per_endpoint,
            overall=settings.webhook_max_concurrency,
            queued_per_target=settings.webhook_max_queued_per_endpoint,
            queued_overall=settings.webhook_max_queued,
        )
        self.metrics = NotifierMetrics(registry or CollectorRegistry())
        self.metrics.in_pool.set_function(lambda: self.pool.queued)
        # A claim must outlast one attempt and the writing of its result, with margin (it is renewed
        # before sending when it ran short while waiting for a slot). It is also how long a crashed
        # notifier's in-flight deliveries wait before another notifier takes them.
        self.lease_s = 2 * settings.webhook_timeout_seconds + 60.0
        self._instance = instance or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._claims = itertools.count()
        self._results: asyncio.Queue[UpdateOne] = asyncio.Queue()
        self._projects: OrderedDict[str, str] = OrderedDict()
        self._being_written: set[str] = set()  # delivery ids of the polls being handled now
        self._wake = asyncio.Event()
        self._soonest = float("inf")

    def _claim_token(self) -> str:
        return f"{self._instance}:{next(self._claims)}"

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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._results.join(), 10.0)
        await self.sender.close()

    # ------------------------------------------------------------------ events -> deliveries

    async def handle_records(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], stop: asyncio.Event,
        attempted: asyncio.Event | None = None,
    ) -> bool:
        """Turn these events into deliveries, durably; True once they are all in MongoDB (commit then).

        Each delivery whose target has room is attempted at once, before its document is written: if
        the attempt finishes within FIRST_ATTEMPT_WAIT_S its outcome goes into the same insert (one
        write per delivery in the common case); if not, the document is inserted claimed by this
        process and the attempt's result is written when it ends. Either way nothing is committed
        before the insert, so a crash in between means Kafka redelivers the events and they are sent
        again — with the same webhook-ids (at-least-once). Raises on a failed read before anything
        was sent (the caller retries); a failed insert is retried here, so nothing is sent twice
        because of it. False: `stop` was set before the insert succeeded. `attempted` is set when the
        first attempts are over and only the insert remains.
        """
        docs, endpoint_of = await self._deliveries_for(records)
        if docs:
            # A re-published event (the outbox after a crash) must not be sent again: skip what exists,
            # and what the previous poll is inserting right now.
            existing = await self.deliveries.existing([d["_id"] for d in docs])
            docs = [d for d in docs if d["_id"] not in existing and d["_id"] not in self._being_written]
        if not docs:
            return True
        ids = {d["_id"] for d in docs}
        self._being_written |= ids
        try:
            return await self._attempt_and_insert(docs, endpoint_of, stop, attempted)
        finally:
            self._being_written -= ids

    async def _attempt_and_insert(
        self, docs: list[dict[str, Any]], endpoint_of: Mapping[str, dict[str, Any]], stop: asyncio.Event,
        attempted: asyncio.Event | None,
    ) -> bool:
        now = time.time()
        firsts: list[_FirstAttempt] = []
        overall_room = self.pool.queued_overall - self.pool.queued
        planned: Tally[str] = Tally()
        for doc in docs:
            target = doc["target"]
            if planned.total() < overall_room and planned[target] < self.pool.room(target):
                planned[target] += 1
                doc["claim"] = self._claim_token()
                doc["lease_until"] = now + self.lease_s
                first = _FirstAttempt(doc, doc["claim"], endpoint_of.get(doc["_id"]))
                firsts.append(first)
                self.pool.submit(target, functools.partial(self._first_attempt, first), force=True)
        if firsts:
            await asyncio.wait([f.outcome for f in firsts], timeout=FIRST_ATTEMPT_WAIT_S)
        finished_first: dict[str, dict[str, Any]] = {}
        late: list[_FirstAttempt] = []
        for first in firsts:
            if first.outcome.done() and not first.outcome.cancelled():
                attempt, next_at, finished = first.outcome.result()
                finished_first[first.doc["_id"]] = with_outcome(first.doc, attempt, next_at=next_at, now=finished)
            else:
                late.append(first)
        rows = [finished_first.get(doc["_id"], doc) for doc in docs]
        if attempted is not None:
            attempted.set()
        created = await _retrying("recording deliveries", functools.partial(self.deliveries.create_many, rows), stop)
        if created is None:
            return False  # shutting down: these events are handled again (and resent) by the next notifier
        for first in late:
            # Still running when its (claimed) document was written: record the result when it ends.
            first.outcome.add_done_callback(functools.partial(self._record_late, first))
        self.metrics.deliveries_created.inc(len(created))
        if any(d["_id"] in created and d.get("claim") is None for d in docs):
            self._wake_at(now)  # overflow: the scheduler takes those when their target has room
        return True

    async def _deliveries_for(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The delivery documents of these events (one per event and matching target), and each one's endpoint."""
        events: list[tuple[CloudEvent, str]] = []
        for record in records:
            event = _parse(record)
            if event is None:
                continue
            batch_id = batch_id_of(event)
            if batch_id is None:
                log.warning("skipping event %s without a batch id (offset %d)", event.id, record.offset)
                continue
            events.append((event, batch_id))
        if not events:
            return [], {}
        projects = await self._projects_of(b for _, b in events)
        endpoints_by_project: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for ep in await self.endpoints.enabled_for_projects(projects.values()):
            endpoints_by_project[ep["project"]].append(ep)

        now = time.time()
        horizon = self.settings.webhook_retry_horizon_seconds
        docs: dict[str, dict[str, Any]] = {}  # by id: an event twice in one poll is one delivery
        endpoint_of: dict[str, dict[str, Any]] = {}
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

    async def _projects_of(self, batch_ids: Iterable[str]) -> dict[str, str]:
        """batch id -> project, from the batches collection (a batch never changes project: cached)."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for batch_id in dict.fromkeys(batch_ids):
            project = self._projects.get(batch_id)
            if project is None:
                missing.append(batch_id)
            else:
                found[batch_id] = project
                self._projects.move_to_end(batch_id)
        if missing:
            for batch_id, project in (await self.batches.projects_of(missing)).items():
                found[batch_id] = self._projects[batch_id] = project
            while len(self._projects) > _PROJECT_CACHE:
                self._projects.popitem(last=False)
        return found

    # ------------------------------------------------------------------ attempts

    def _submit(self, doc: dict[str, Any], claim: str) -> None:
        self.pool.submit(doc["target"], functools.partial(self._claimed_attempt, doc, claim), force=True)

    async def _first_attempt(self, first: _FirstAttempt) -> None:
        """The first attempt of a delivery whose document is written meanwhile (handle_records)."""
        try:
            first.outcome.set_result(await self._attempt(first.doc, first.endpoint))
        except BaseException:
            first.outcome.cancel()  # no outcome: its claim lapses and the scheduler retries it (the pool logs why)
            raise

    def _record_late(self, first: _FirstAttempt, outcome: asyncio.Future[Any]) -> None:
        if outcome.cancelled():
            return
        attempt, next_at, finished = outcome.result()
        self._results.put_nowait(finish_update(first.doc, first.claim, attempt, next_at=next_at, now=finished))

    async def _claimed_attempt(self, doc: dict[str, Any], claim: str) -> None:
        """An attempt of a delivery this process claimed in MongoDB (retries, overflow, lapsed claims)."""
        now = time.time()
        if doc["lease_until"] - now < self.settings.webhook_timeout_seconds + 5.0:
            # It waited for a slot long enough for the claim to run short: renew it, or lose it to
            # whoever claimed it since (then that one sends, not us).
            renewed = await self.deliveries.collection.update_one(
                {"_id": doc["_id"], "claim": claim}, {"$set": {"lease_until": now + self.lease_s}}
            )
            if renewed.matched_count == 0:
                return
        attempt, next_at, finished = await self._attempt(doc, None)
        self._results.put_nowait(finish_update(doc, claim, attempt, next_at=next_at, now=finished))

    async def _attempt(
        self, doc: Mapping[str, Any], endpoint: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], float | None, float]:
        """Send once; the attempt record, when to retry (None: delivered or dead) and when it finished."""
        number = int(doc.get("attempt_count") or 0) + 1
        started = time.time()
        result = await self._send(doc, endpoint)
        finished = time.time()
        self.metrics.attempts.labels("succeeded" if result.ok else "failed").inc()
        self.metrics.attempt_seconds.observe(result.latency_ms / 1000)
        next_at: float | None = None
        if not result.ok and not result.refused:
            next_at = next_attempt_after_failure(
                finished, number, float(doc["deadline"]),
                self.settings.webhook_retry_base_seconds, self.settings.webhook_retry_max_delay_seconds,
            )
        if result.ok:
            self.metrics.finished.labels("delivered").inc()
            self.metrics.delivery_seconds.observe(max(0.0, finished - float(doc["created_at"])))
        elif next_at is None:
            self.metrics.finished.labels("dead").inc()
            log.warning("delivery %s (%s) is dead after %d attempts: %s", doc["_id"], doc["event_type"], number,
                        result.error)
        else:
            self._wake_at(next_at)
        return result.attempt(number, started, next_at), next_at, finished

    async def _send(self, doc: Mapping[str, Any], endpoint: Mapping[str, Any] | None) -> SendResult:
        """Resolve the target's URL and secrets now (they may have changed since the event), sign, send."""
        try:
            if doc.get("endpoint_id") is not None:
                ep = endpoint or await self.endpoints.get_any(doc["endpoint_id"])
                if ep is None:
                    return SendResult(False, 0, error="the endpoint was deleted", refused=True)
                if not ep.get("enabled", True):
                    return SendResult(False, 0, error="the endpoint is disabled", refused=True)
                url, secrets = ep["url"], active_secrets(self.box, ep, ep["_id"])
            else:
                url = doc["callback_url"]
                secret_doc = await self.endpoints.callback_secret_doc(doc["project"])
                secrets = active_secrets(self.box, secret_doc, callback_owner(doc["project"]))
        except SecretKeyError as exc:
            return SendResult(False, 0, error=f"cannot sign: {exc}")
        body = doc["body"].encode()
        return await self.sender.send(url, body, webhook_headers(doc["_id"], body, secrets))

    # ------------------------------------------------------------------ loops

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, schedule and record until `stop` is set (or a loop fails: then it sets `stop` and
        re-raises), then shut down cleanly."""
        s = self.settings
        session_ms = int(s.kafka_session_timeout_seconds * 1000)
        consumer = Consumer(
            s, [batch_events_topic(s)], group_id=notifier_group(s), client_id="offhours-notifier",
            session_timeout_ms=session_ms, heartbeat_interval_ms=max(500, session_ms // 3),
            # A webhook is worth its latency: Tansu answers a fetch only when this wait is over even if
            # records arrived (Kafka answers at once); 50 ms costs an idle consumer 20 fetches a second.
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        log.info("notifier running (topic %s, group %s)", consumer.topics[0], notifier_group(s))
        tasks = [
            asyncio.create_task(self._consume(consumer, stop), name="notifier-consume"),
            asyncio.create_task(self._schedule(stop), name="notifier-schedule"),
            asyncio.create_task(self._record(), name="notifier-record"),
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

    async def _consume(self, consumer: Consumer, stop: asyncio.Event) -> None:
        """Poll, hand each poll to handle_records, commit polls in order once their deliveries are written.

        The next poll is taken as soon as the current one's first attempts are over (its insert
        then overlaps the next poll's attempts); at most one insert is outstanding, and offsets are
        committed strictly in poll order.
        """
        Handling = tuple[asyncio.Task[bool | None], list[ConsumerRecord[bytes, bytes]]]
        writing: Handling | None = None
        current: Handling | None = None

        async def committed(handling: Handling) -> bool:
            task, done_records = handling
            if not await task:
                return False  # not committed: the next notifier handles these records again, harmlessly
            await consumer.commit(done_records)
            return True

        try:
            while not stop.is_set():
                # Backpressure: give the record loop time to catch up before taking more work.
                while self._results.qsize() > _RESULTS_HIGH_WATER and not stop.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                records = await consumer.getmany(timeout_ms=500, max_records=_POLL_RECORDS)
                current = None
                if records:
                    attempted = asyncio.Event()
                    step = functools.partial(self.handle_records, records, stop, attempted)
                    current = (asyncio.create_task(_retrying("creating deliveries", step, stop)), records)
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

    def _wake_at(self, at: float) -> None:
        if at < self._soonest:
            self._soonest = at
            self._wake.set()

    async def _schedule(self, stop: asyncio.Event) -> None:
        poll = self.settings.webhook_poll_interval_seconds
        while not stop.is_set():
            self._wake.clear()
            try:
                while self.pool.queued < self.pool.queued_overall:
                    claim = self._claim_token()
                    doc = await self.deliveries.claim_due(claim, self.lease_s, skip_targets=self.pool.full_targets())
                    if doc is None:
                        break
                    self._submit(doc, claim)
            except Exception:
                log.exception("claiming due deliveries failed; retrying at the next poll")
            # Sleep until the earliest retry this process scheduled, a wake-up, or the poll interval
            # (retries scheduled by other notifiers, claims that lapsed).
            now = time.time()
            if self._soonest <= now:
                self._soonest = float("inf")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(poll, self._soonest - now)))

    async def _record(self) -> None:
        while True:
            ops = [await self._results.get()]
            while len(ops) < _RESULT_BATCH and not self._results.empty():
                ops.append(self._results.get_nowait())
            try:
                await self._write_results(ops)
            finally:
                for _ in ops:
                    self._results.task_done()

    async def _write_results(self, ops: list[UpdateOne]) -> None:
        """Write until it succeeds (MongoDB briefly unavailable); the consumer pauses meanwhile (backpressure)."""
        delay = 0.2
        while True:
            try:
                held = await self.deliveries.write_results(ops)
                if held < len(ops):
                    log.info("%d attempt results arrived after their claim lapsed", len(ops) - held)
                return
            except Exception:
                log.warning("recording %d attempt results failed; retrying in %.1fs", len(ops), delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)


def _parse(record: ConsumerRecord[bytes, bytes]) -> CloudEvent | None:
    try:
        return CloudEvent.model_validate(orjson.loads(record.value or b"null"))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        log.warning("skipping a record that is not a CloudEvent on %s at offset %d: %s", record.topic,
                    record.offset, str(exc)[:200])
        return None


async def _retrying(what: str, step: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
    """`await step()` until it succeeds (MongoDB briefly unavailable); None if `stop` is set first."""
    delay = 0.2
    while True:
        try:
            return await step()
        except Exception:
            log.warning("%s failed; retrying in %.1fs", what, delay, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None
        delay = min(delay * 2, _MAX_BACKOFF_S)
