"""The worker: one model's work chunks in, result parts and result messages out.

For each chunk message of `{prefix}.work.<model>` (group `{prefix}-worker.<model>`; more workers =
the topic's partitions shared among more members):
1. skip it if its ledger entry is no longer `pending` (another attempt already counted), or report
   it `skipped` if the batch is cancelling or finished (docs/architecture.md, "Lifecycle" 3);
2. stream its byte range from S3 through a fresh LineValidator into the shared Pipeline;
3. write the output and error parts under `batches/<id>/parts/<chunk>/<attempt>.*` (a new attempt id
   per try, so a late duplicate never overwrites the parts the ledger points at);
4. publish the result, and only then commit the offset.
A crash anywhere before 4 means redelivery and a new attempt; the dispatcher's ledger CAS counts
one of them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import deque
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Consumer, Producer, consumer_options
from events.topics import ensure_topics, sanitize_topic_component, work_results_topic, work_topic
from schemas.work import WorkChunk, WorkResult, line_id_prefix, part_keys
from services.inference.engines.base import Engine
from services.inference.pipeline import Pipeline
from services.runtime.retry import Stopped, retry_until_stopped
from services.settings import Settings
from services.state.batches import BatchStore
from services.state.chunk_objects import PartWriter
from services.state.ledger import PENDING, ChunkLedger
from services.stores.s3 import ObjectStore
from services.worker.chunk_io import read_chunk_items

log = logging.getLogger(__name__)

RUNNABLE_STATUSES = frozenset({"validating", "in_progress"})


def worker_group(settings: Settings, model: str) -> str:
    return f"{settings.topic_prefix}-worker.{sanitize_topic_component(model)}"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.chunks = Counter("offhours_worker_chunks", "Chunk messages handled, by outcome "
                              "(done, skipped, stale = already counted elsewhere, retried = failed, redelivered).",
                              ("outcome",), registry=registry)
        self.lines = Counter("offhours_worker_lines", "Request lines run, by result.", ("result",), registry=registry)
        self.tokens = Counter("offhours_worker_tokens", "Tokens reported by the engine.", ("kind",), registry=registry)
        self.chunk_seconds = Histogram("offhours_worker_chunk_seconds", "Time to run one chunk.", registry=registry,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900))
        self.running = Gauge("offhours_worker_chunks_running", "Chunks being run now.", registry=registry)


class Worker:
    def __init__(
        self, settings: Settings, engine: Engine, *, db: AsyncDatabase[Any], store: ObjectStore, producer: Producer,
        worker_id: str, concurrency: int | None = None, registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.model = engine.model
        self.store = store
        self.producer = producer
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.batches = BatchStore(db)
        self.ledger = ChunkLedger(db)
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.results_topic = work_results_topic(settings)
        self.chunks_done = 0
        self.in_hand: set[str] = set()  # chunk ids being run, for the heartbeat
        self._consumer: Consumer | None = None

    def stats(self) -> dict[str, Any]:
        """What the heartbeat reports: progress and which work-topic partitions this worker owns now."""
        partitions = sorted(tp.partition for tp in self._consumer.assignment()) if self._consumer else []
        return {"chunks_done": self.chunks_done, "in_hand": sorted(self.in_hand), "partitions": partitions}

    async def prepare(self) -> None:
        s = self.settings
        await ensure_topics(s, [work_topic(s, self.model)], partitions=s.work_topic_partitions)
        await ensure_topics(s, [self.results_topic])

    # ------------------------------------------------------------------ one chunk

    async def process(self, chunk: WorkChunk) -> WorkResult | None:
        """Run one chunk; None when there is nothing to report (the chunk was already counted)."""
        entry = await self.ledger.get(chunk.batch_id, chunk.chunk)
        if entry is None or entry.get("status") != PENDING:
            self.metrics.chunks.labels("stale").inc()
            return None
        status = await self.batches.status(chunk.batch_id)
        if status is None:
            self.metrics.chunks.labels("stale").inc()
            return None
        attempt = uuid.uuid4().hex[:12]
        if status not in RUNNABLE_STATUSES:
            self.metrics.chunks.labels("skipped").inc()
            return WorkResult(batch_id=chunk.batch_id, chunk=chunk.chunk, attempt=attempt, outcome="skipped",
                              worker=self.worker_id)
        started = time.perf_counter()
        out_key, err_key = part_keys(chunk.batch_id, chunk.chunk, attempt)
        self.metrics.running.inc()
        try:
            items = await read_chunk_items(self.store, chunk, self.settings.max_line_bytes)
            async with PartWriter(self.store, out_key) as out, PartWriter(self.store, err_key) as err:
                pipeline = Pipeline(self.engine, output=out, errors=err, id_prefix=line_id_prefix(chunk.batch_id),
                                    max_concurrency=self.concurrency)
                stats = await pipeline.run(items)
                del items
        finally:
            self.metrics.running.dec()
        if stats.total != chunk.line_count:
            log.error("chunk %s:%d ran %d lines, the dispatcher planned %d", chunk.batch_id, chunk.chunk,
                      stats.total, chunk.line_count)
        m = self.metrics
        m.chunks.labels("done").inc()
        m.chunk_seconds.observe(time.perf_counter() - started)
        m.lines.labels("succeeded").inc(stats.succeeded)
        m.lines.labels("failed").inc(stats.failed)
        m.tokens.labels("input").inc(stats.input_tokens)
        m.tokens.labels("output").inc(stats.output_tokens)
        return WorkResult(
            batch_id=chunk.batch_id, chunk=chunk.chunk, attempt=attempt, outcome="done",
            output_key=out.key, error_key=err.key, succeeded=stats.succeeded, failed=stats.failed,
            input_tokens=stats.input_tokens, output_tokens=stats.output_tokens, worker=self.worker_id,
        )

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Process one record and publish its result (raises on failure: the caller retries, uncommitted)."""
        try:
            chunk = WorkChunk.model_validate_json(record.value or b"")
        except ValidationError:
            log.warning("skipping a malformed chunk message at %s[%d] offset %d",
                        record.topic, record.partition, record.offset)
            return
        if chunk.model != self.model:
            log.warning("chunk %s:%d is for model %r, not %r; skipping", chunk.batch_id, chunk.chunk,
                        chunk.model, self.model)
            return
        name = f"{chunk.batch_id}:{chunk.chunk}"
        self.in_hand.add(name)
        try:
            result = await self.process(chunk)
            if result is not None:
                await self.producer.send_json(self.results_topic, result.batch_id, result.model_dump())
                if result.outcome == "done":
                    self.chunks_done += 1
        finally:
            self.in_hand.discard(name)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`, running up to `worker_chunks_in_flight` chunks at once.

        Chunks run concurrently but are committed in the order they were fetched (which keeps each
        partition's order): an offset is committed only once every chunk fetched before it is done.
        The window is what keeps an engine full across chunk boundaries — while one chunk's last
        requests drain, the next chunk's are already running — and overlaps each chunk's S3, MongoDB
        and Kafka round trips with another's inference. On `stop`, nothing new is fetched and the
        chunks in hand get `worker_shutdown_grace_seconds` to finish; the rest stay uncommitted.
        """
        s = self.settings
        consumer = Consumer(s, [work_topic(s, self.model)], group_id=worker_group(s, self.model),
                            client_id=f"offhours-worker.{self.model}", **consumer_options(s))
        await consumer.start()
        self._consumer = consumer
        window = max(1, s.worker_chunks_in_flight)
        fetched: deque[tuple[ConsumerRecord[bytes, bytes], asyncio.Task[bool]]] = deque()
        running: set[asyncio.Task[bool]] = set()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if len(running) >= window or len(fetched) >= 4 * window:
                    await asyncio.wait({*running, stopping} if running else {fetched[0][1], stopping},
                                       return_when=asyncio.FIRST_COMPLETED)
                else:
                    for record in await consumer.getmany(timeout_ms=200, max_records=window - len(running)):
                        task = asyncio.create_task(self._run_until_done(record, stop))
                        fetched.append((record, task))
                        running.add(task)
                running = {t for t in running if not t.done()}
                await self._commit_done(consumer, fetched)
            if running:
                grace = s.worker_shutdown_grace_seconds
                log.info("stopping: giving the %d chunk(s) in hand %.0fs to finish", len(running), grace)
                _, unfinished = await asyncio.wait(running, timeout=grace)
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
                if unfinished:
                    log.info("abandoned %d chunk(s); they will be redelivered", len(unfinished))
            await self._commit_done(consumer, fetched)
        finally:
            stopping.cancel()
            for _, task in fetched:
                task.cancel()
            await asyncio.gather(*(t for _, t in fetched), return_exceptions=True)
            self._consumer = None
            await consumer.stop()

    async def _run_until_done(self, record: ConsumerRecord[bytes, bytes], stop: asyncio.Event) -> bool:
        """Handle the record, retrying in place with backoff (S3/Kafka/MongoDB down, engine unavailable).

        True once handled; False when `stop` came first (the record stays uncommitted and is
        redelivered to whoever owns the partition next).
        """
        try:
            await retry_until_stopped(
                functools.partial(self.handle, record), stop=stop,
                what=f"chunk at {record.topic}[{record.partition}] offset {record.offset}",
                on_failure=lambda _: self.metrics.chunks.labels("retried").inc(),
            )
        except Stopped:
            return False
        return True

    async def _commit_done(
        self, consumer: Consumer, fetched: deque[tuple[ConsumerRecord[bytes, bytes], asyncio.Task[bool]]]
    ) -> None:
        """Commit the finished prefix of the fetch order (per partition, that is every offset below)."""
        done: list[ConsumerRecord[bytes, bytes]] = []
        while fetched and fetched[0][1].done():
            record, task = fetched.popleft()
            if task.cancelled() or task.exception() is not None or not task.result():
                fetched.appendleft((record, task))  # abandoned: nothing from here on may be committed
                break
            done.append(record)
        if not done:
            return
        try:
            await consumer.commit(done)
        except Exception:
            # Typically a rebalance took the partition: its new owner re-runs those chunks and the
            # ledger counts one attempt of each. Nothing is lost by not committing.
            log.warning("committing %d chunk(s) failed", len(done), exc_info=True)
