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

A line's failure is that line's outcome (the engine and the Pipeline make it an error line), so a
chunk fails only when the engine as a whole or storage is unavailable. Then it is retried in place
with backoff, keeping what earlier tries got (the lines read, the slots answered, a finished result
not yet published), so no line is sent to the engine twice. `worker_chunk_max_attempts` tries
that find the engine unavailable end the retrying: the lines still unanswered become
`engine_unavailable` error lines and the chunk is reported done, so its batch goes on. A storage
failure (S3, MongoDB, Kafka) is retried until it clears or the worker stops: without storage no
result can be reported at all, and the chunk stays uncommitted for whoever owns it next.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Consumer, Producer, consumer_options
from events.topics import ensure_topics, sanitize_topic_component, work_results_topic, work_topic
from schemas.line_validation import LineIssue, ValidLine
from schemas.work import WorkChunk, WorkResult, line_id_prefix, part_keys
from services.inference.engines.base import Engine, EngineUnavailable
from services.inference.pipeline import AnsweredSlots, Pipeline
from services.runtime.retry import Stopped, retry_until_stopped
from services.settings import Settings
from services.state.batches import BatchStore
from services.state.chunk_objects import PartWriter
from services.state.ledger import PENDING, ChunkLedger
from services.stores.s3 import ObjectStore
from services.worker.chunk_io import read_chunk_items

log = logging.getLogger(__name__)

RUNNABLE_STATUSES = frozenset({"validating", "in_progress"})

# A fetched chunk message and the task running it, held until its offset is committed.
_InHand = tuple[ConsumerRecord[bytes, bytes], "asyncio.Task[bool]"]


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
        self.engine_limit = Gauge("offhours_worker_engine_concurrency_limit",
                                  "Requests the engine lets be in flight now (adaptive for upstream engines).",
                                  registry=registry)
        self.line_failures = Counter("offhours_worker_line_failures", "Failed request lines, by error code.",
                                     ("code",), registry=registry)
        self.chunk_retries = Counter("offhours_worker_chunk_retries", "Chunk tries that failed and were "
                                     "retried, by reason (engine_unavailable, backend = S3/MongoDB/Kafka).",
                                     ("reason",), registry=registry)
        self.chunk_give_ups = Counter("offhours_worker_chunk_give_ups", "Chunks whose engine stayed unavailable "
                                      "through every try: their unanswered lines became engine_unavailable.",
                                      registry=registry)
        self.commit_failures = Counter("offhours_worker_commit_failures", "Offset commits that failed (a "
                                       "rebalance, the broker away); the chunks are redelivered.", registry=registry)
        self.partitions_paused = Gauge("offhours_worker_partitions_paused", "Work-topic partitions not fetched "
                                       "from now because their uncommitted backlog is full.", registry=registry)


@dataclass
class ChunkTries:
    """What the tries at one chunk message keep for each other, so a retry never repeats work done."""

    items: list[ValidLine | LineIssue] | None = None  # the chunk's lines, read once
    answered: AnsweredSlots = field(default_factory=dict)  # engine answers, by slot
    engine_failures: int = 0  # tries that found the engine unavailable
    given_up: bool = False  # the engine is not asked again: unanswered lines are engine_unavailable
    result: WorkResult | None = None  # finished (parts written) but maybe not yet published


def backlog_limit(chunks_in_flight: int) -> int:
    """Chunk messages of one partition held uncommitted before the worker stops fetching from it.

    Finished chunks queue behind an unfinished one until it is done (offsets commit in order); they
    cost a record each, so the limit is generous enough that the partitions of a slow chunk rarely
    pause, yet bounds what a redelivery after a crash would hand out again.
    """
    return max(8, 4 * chunks_in_flight)


def pacing(
    backlogs: Mapping[TopicPartition, int], assigned: Iterable[TopicPartition], paused: Iterable[TopicPartition],
    limit: int,
) -> tuple[set[TopicPartition], set[TopicPartition]]:
    """(partitions to pause, partitions to resume): paused exactly while their backlog is at `limit`.

    Only assigned partitions are paused (the consumer knows no others); a partition whose backlog
    is gone (revoked, or drained) is resumed.
    """
    full = {tp for tp in assigned if backlogs.get(tp, 0) >= limit}
    paused = set(paused)
    return full - paused, {tp for tp in paused if backlogs.get(tp, 0) < limit}


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
        # An adaptive engine (upstream) lowers this while its server is busy with other traffic.
        self.metrics.engine_limit.set_function(
            lambda: float(getattr(engine, "concurrency_limit", engine.max_concurrency)))
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

    async def process(self, chunk: WorkChunk, tries: ChunkTries | None = None) -> WorkResult | None:
        """Run one chunk; None when there is nothing to report (the chunk was already counted).

        Raises `EngineUnavailable` while the engine is unavailable and tries are left, and any storage
        error; `tries` (the same object on every try at this message) keeps what a retry must not redo.
        """
        tries = tries if tries is not None else ChunkTries()
        entry = await self.ledger.get(chunk.batch_id, chunk.chunk)
        if entry is None or entry.get("status") != PENDING:
            self.metrics.chunks.labels("stale").inc()
            return None
        status = await self.batches.status(chunk.batch_id)
        if status is None:
            self.metrics.chunks.labels("stale").inc()
            return None
        if status not in RUNNABLE_STATUSES:
            self.metrics.chunks.labels("skipped").inc()
            return WorkResult(batch_id=chunk.batch_id, chunk=chunk.chunk, attempt=uuid.uuid4().hex[:12],
                              outcome="skipped", worker=self.worker_id)
        started = time.perf_counter()
        self.metrics.running.inc()
        try:
            if tries.items is None:
                tries.items = await read_chunk_items(self.store, chunk, self.settings.max_line_bytes)
            while True:
                try:
                    result = await self._run_lines(chunk, tries)
                    break
                except EngineUnavailable as exc:
                    tries.engine_failures += 1
                    if tries.engine_failures < self.settings.worker_chunk_max_attempts:
                        raise
                    # No backoff before giving up: the last try already waited its turn.
                    tries.given_up = True
                    self.metrics.chunk_give_ups.inc()
                    log.warning("chunk %s:%d: engine unavailable on %d tries (%s); its unanswered lines become "
                                "engine_unavailable errors", chunk.batch_id, chunk.chunk, tries.engine_failures, exc)
        finally:
            self.metrics.running.dec()
        m = self.metrics
        m.chunks.labels("done").inc()
        m.chunk_seconds.observe(time.perf_counter() - started)
        return result

    async def _run_lines(self, chunk: WorkChunk, tries: ChunkTries) -> WorkResult:
        """One try: the chunk's lines through the Pipeline into a new attempt's parts."""
        assert tries.items is not None
        attempt = uuid.uuid4().hex[:12]
        out_key, err_key = part_keys(chunk.batch_id, chunk.chunk, attempt)
        async with PartWriter(self.store, out_key) as out, PartWriter(self.store, err_key) as err:
            pipeline = Pipeline(self.engine, output=out, errors=err, id_prefix=line_id_prefix(chunk.batch_id),
                                max_concurrency=self.concurrency, answered=tries.answered, give_up=tries.given_up)
            stats = await pipeline.run(tries.items)
        if stats.total != chunk.line_count:
            log.error("chunk %s:%d ran %d lines, the dispatcher planned %d", chunk.batch_id, chunk.chunk,
                      stats.total, chunk.line_count)
        m = self.metrics
        m.lines.labels("succeeded").inc(stats.succeeded)
        m.lines.labels("failed").inc(stats.failed)
        for code, n in stats.failures_by_code.items():
            m.line_failures.labels(code).inc(n)
        m.tokens.labels("input").inc(stats.input_tokens)
        m.tokens.labels("output").inc(stats.output_tokens)
        return WorkResult(
            batch_id=chunk.batch_id, chunk=chunk.chunk, attempt=attempt, outcome="done",
            output_key=out.key, error_key=err.key, succeeded=stats.succeeded, failed=stats.failed,
            input_tokens=stats.input_tokens, output_tokens=stats.output_tokens, worker=self.worker_id,
        )

    async def handle(self, record: ConsumerRecord[bytes, bytes], tries: ChunkTries | None = None) -> None:
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
        tries = tries if tries is not None else ChunkTries()
        try:
            result = tries.result
            if result is None:
                result = await self.process(chunk, tries)
                if result is None:
                    return
                if result.outcome == "done":
                    # Its parts are written: a failed publish re-sends this result, never re-runs the lines.
                    tries.result, tries.items, tries.answered = result, None, {}
            await self.producer.send_json(self.results_topic, result.batch_id, result.model_dump())
            if result.outcome == "done":
                self.chunks_done += 1
        finally:
            self.in_hand.discard(name)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`, running up to `worker_chunks_in_flight` chunks at once.

        Chunks run concurrently but each partition's offsets are committed in order: an offset only
        once every chunk fetched before it from that partition is done. A slow chunk therefore holds
        back the commits of its own partition only; when that partition's uncommitted backlog is
        full (`backlog_limit`) it is paused while the others are still fetched, and resumed once it
        drains. The window is what keeps an engine full across chunk boundaries — while one chunk's
        last requests drain, the next chunk's are already running — and overlaps each chunk's S3,
        MongoDB and Kafka round trips with another's inference. On `stop`, nothing new is fetched
        and the chunks in hand get `worker_shutdown_grace_seconds` to finish; the rest stay uncommitted.
        """
        s = self.settings
        consumer = Consumer(s, [work_topic(s, self.model)], group_id=worker_group(s, self.model),
                            client_id=f"offhours-worker.{self.model}", **consumer_options(s))
        await consumer.start()
        self._consumer = consumer
        window = max(1, s.worker_chunks_in_flight)
        limit = backlog_limit(window)
        fetched: dict[TopicPartition, deque[_InHand]] = {}
        running: set[asyncio.Task[bool]] = set()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._pace(consumer, fetched, limit)
                if len(running) >= window:
                    await asyncio.wait({*running, stopping}, return_when=asyncio.FIRST_COMPLETED)
                else:
                    for record in await consumer.getmany(timeout_ms=200, max_records=window - len(running)):
                        task = asyncio.create_task(self._run_until_done(record, stop))
                        tp = TopicPartition(record.topic, record.partition)
                        fetched.setdefault(tp, deque()).append((record, task))
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
            tasks = [task for queue in fetched.values() for _, task in queue]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._consumer = None
            self.metrics.partitions_paused.set(0)
            await consumer.stop()

    def _pace(self, consumer: Consumer, fetched: dict[TopicPartition, deque[_InHand]], limit: int) -> None:
        """Pause the partitions whose uncommitted backlog is full, resume those that drained."""
        pause, resume = pacing({tp: len(q) for tp, q in fetched.items()}, consumer.assignment(),
                               consumer.paused(), limit)
        if pause:
            log.info("pausing partition(s) %s: %d chunk(s) wait behind an unfinished one",
                     sorted(tp.partition for tp in pause), limit)
            consumer.pause(pause)
        if resume:
            consumer.resume(resume)
        if pause or resume:
            self.metrics.partitions_paused.set(len(consumer.paused()))

    async def _run_until_done(self, record: ConsumerRecord[bytes, bytes], stop: asyncio.Event) -> bool:
        """Handle the record, retrying in place with backoff (S3/Kafka/MongoDB down, engine unavailable).

        True once handled; False when `stop` came first (the record stays uncommitted and is
        redelivered to whoever owns the partition next). The engine-unavailable tries are bounded
        inside `process`; what one try achieved is kept for the next (`ChunkTries`).
        """
        tries = ChunkTries()

        def failed(exc: BaseException) -> None:
            self.metrics.chunks.labels("retried").inc()
            self.metrics.chunk_retries.labels(
                "engine_unavailable" if isinstance(exc, EngineUnavailable) else "backend").inc()

        try:
            await retry_until_stopped(
                functools.partial(self.handle, record, tries), stop=stop,
                what=f"chunk at {record.topic}[{record.partition}] offset {record.offset}",
                on_failure=failed,
            )
        except Stopped:
            return False
        return True

    async def _commit_done(self, consumer: Consumer, fetched: dict[TopicPartition, deque[_InHand]]) -> None:
        """Commit, per partition, the finished prefix of its fetch order."""
        done: list[ConsumerRecord[bytes, bytes]] = []
        for tp in list(fetched):
            queue = fetched[tp]
            while queue and queue[0][1].done():
                task = queue[0][1]
                if task.cancelled() or task.exception() is not None or not task.result():
                    break  # abandoned: nothing from here on in this partition may be committed
                done.append(queue.popleft()[0])
            if not queue:
                del fetched[tp]
        # A failed commit (typically a rebalance took the partition) loses nothing: its new owner
        # re-runs those chunks and the ledger counts one attempt of each.
        if done and not await consumer.try_commit(done):
            self.metrics.commit_failures.inc()

