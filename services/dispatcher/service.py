"""The dispatcher: batch events in, work chunks out; results in, finished files out.

Three loops share one process (docs/architecture.md):
- events (`{prefix}.batch.events`, group `{prefix}-dispatcher`): `batch.created` -> validate + dispatch,
  `batch.cancelling` -> finalize once nothing is pending. Handled one at a time, offsets committed
  after the handling.
- results (`{prefix}.work.results`, group `{prefix}-dispatcher.results`): ledger CAS, throttled
  progress, and finalize when the last chunk is in (finalize runs as a task, so one batch's
  finalize never holds up another batch's results).
- sweep (timer): expiry, cancel timeout, finalizes orphaned by a dead dispatcher, results whose
  finalize trigger was lost, and re-publication of stale outbox events.

Every step is idempotent, so any number of dispatchers may run and any of them may die at any
point: the uncommitted record is redelivered, or the sweep picks the batch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Consumer, Producer, consumer_options
from events.topics import batch_events_topic, ensure_topics, work_results_topic, work_topic
from schemas.work import WorkChunk, WorkResult, chunk_id, input_object_key
from services.dispatcher.finalize import OUTCOME_FIELD, Finalizer, Outcome, release_input
from services.dispatcher.progress import ProgressThrottle
from services.dispatcher.validate import InputLimits, located, run_pass
from services.inference.registry import ModelSpec, load_registry
from services.runtime.retry import Stopped, retry_until_stopped
from services.settings import Settings
from services.state.batches import BatchStore
from services.state.files import FileStore
from services.state.ledger import ChunkLedger, ChunkPlan
from services.state.outbox import EventPublisher
from services.state.workers import live_models
from services.stores.s3 import ObjectStore

log = logging.getLogger(__name__)

_PUBLISH_WINDOW = 256  # chunk messages in flight at once while dispatching a batch


def dispatcher_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}-dispatcher"


class DispatcherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.validated = Counter("offhours_dispatcher_batches_validated", "Validation passes, by result.",
                                 ("result",), registry=registry)
        self.validation_seconds = Histogram("offhours_dispatcher_validation_seconds",
                                            "Time of one validation + dispatch pass.", registry=registry,
                                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.chunks_published = Counter("offhours_dispatcher_chunks_published", "Work chunks published.",
                                        registry=registry)
        self.results = Counter("offhours_dispatcher_results", "Chunk results, by outcome and whether they counted.",
                               ("outcome", "counted"), registry=registry)
        self.finalized = Counter("offhours_dispatcher_batches_finalized", "Batches finalized, by status.",
                                 ("status",), registry=registry)
        self.finalize_seconds = Histogram("offhours_dispatcher_finalize_seconds", "Time of one finalize.",
                                          registry=registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))


class Dispatcher:
    def __init__(
        self, settings: Settings, *, db: AsyncDatabase[Any], store: ObjectStore, producer: Producer,
        files: FileStore, registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        # Read once: a broken models file stops start-up rather than each batch (RegistryError).
        self.models = load_registry(settings.models_file)
        self.db = db
        self.store = store
        self.producer = producer
        self.batches = BatchStore(db)
        self.ledger = ChunkLedger(db)
        self.publisher = EventPublisher(self.batches, producer, settings)
        self.finalizer = Finalizer(batches=self.batches, ledger=self.ledger, store=store, files=files,
                                   publisher=self.publisher, max_line_bytes=settings.max_line_bytes)
        self.progress = ProgressThrottle(self._recompute_progress, settings.progress_interval_seconds)
        self.metrics = DispatcherMetrics(registry or CollectorRegistry())
        self._finalizing: dict[str, asyncio.Task[None]] = {}
        self._finalize_failed: set[str] = set()
        self._progress_seq: dict[str, int] = {}
        self._topics_ready: set[str] = set()

    async def prepare(self) -> None:
        await self.batches.ensure_indexes()
        await self.ledger.ensure_indexes()
        await ensure_topics(self.settings, [batch_events_topic(self.settings), work_results_topic(self.settings)])

    # ------------------------------------------------------------------ batch events

    async def handle_event(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            event = orjson.loads(record.value) if record.value else None
        except orjson.JSONDecodeError:
            log.warning("skipping a non-JSON record on %s at offset %d", record.topic, record.offset)
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind not in ("batch.created", "batch.cancelling"):
            return
        data = event.get("data")
        batch_id = event.get("subject") or (data.get("id") if isinstance(data, dict) else None)
        if not isinstance(batch_id, str):
            log.warning("skipping %s event without a batch id (offset %d)", kind, record.offset)
            return
        if kind == "batch.created":
            await self.on_created(batch_id)
        else:
            await self.check_done(batch_id)

    async def on_created(self, batch_id: str) -> None:
        doc = await self.batches.get(batch_id)
        if doc is None:
            log.warning("batch.created for unknown batch %s", batch_id)
            return
        if doc["status"] == "validating":
            started = time.perf_counter()
            await self.validate_and_dispatch(doc)
            self.metrics.validation_seconds.observe(time.perf_counter() - started)
        elif doc["status"] == "in_progress":
            # Redelivered after the CAS (we died before committing): re-send what is still pending, in
            # case its messages were lost; duplicates only cost a skipped attempt.
            pending = [_plan(c) for c in await self.ledger.chunks(batch_id, "pending")]
            await self._publish_chunks(doc, str(doc["model"]), pending)

    def _model_spec(self, model: str | None) -> ModelSpec | None:
        return None if model is None else self.models.get(model)

    def _limits(self, spec: ModelSpec | None) -> InputLimits:
        s = self.settings
        if spec is not None and spec.test_limits:
            return InputLimits(max_bytes=min(s.test_model_max_file_bytes, s.max_file_bytes),
                               max_requests=min(s.test_model_max_lines, s.max_requests_per_batch),
                               max_line_bytes=s.max_line_bytes, test_model=True)
        return InputLimits(max_bytes=s.max_file_bytes, max_requests=s.max_requests_per_batch,
                           max_line_bytes=s.max_line_bytes)

    async def _serving_error(self, model: str, endpoint: str) -> dict[str, Any] | None:
        served = await live_models(self.db, self.settings.worker_liveness_seconds)
        live = served.get(model)
        if live is None:
            return located("model_not_found",
                           f"model {model!r} is not served: no worker for it has been seen in the last "
                           f"{self.settings.worker_liveness_seconds:g}s", param="body.model")
        if endpoint not in live["endpoints"]:
            return located("unsupported_endpoint",
                           f"model {model!r} does not serve {endpoint} (it serves {', '.join(live['endpoints'])})",
                           param="endpoint")
        return None

    async def _fail(self, batch_id: str, errors: list[dict[str, Any]], **fields: Any) -> None:
        new = await self.batches.transition(batch_id, "validating", "failed", set={"errors": errors, **fields})
        self.metrics.validated.labels("failed").inc()
        if new is not None:
            await self.publisher.publish_outbox(new)
            await release_input(self.finalizer.files, new)
            log.info("batch %s failed validation: %s", batch_id, errors[0]["message"])

    async def validate_and_dispatch(self, doc: dict[str, Any]) -> None:
        batch_id, endpoint, model = doc["_id"], doc["endpoint"], doc.get("model")
        if model is not None and (err := await self._serving_error(model, endpoint)):
            await self._fail(batch_id, [err])
            return
        spec = self._model_spec(model)
        result = await run_pass(
            self.store, doc, limits=self._limits(spec),
            chunk_lines=(spec.chunk_lines if spec and spec.chunk_lines else self.settings.chunk_lines_default),
            chunk_max_bytes=self.settings.chunk_max_bytes,
        )
        if result.ok and model is None and result.model is None:
            # Every line is a request-level failure whose body is not even an object: nothing names a model.
            result.errors.append(located("missing_model", "no request line of the file names a model (body.model)",
                                         param="body.model"))
        elif result.ok and model is None:
            # A URL input (or a first line the API could not read): the model is known once lines were read.
            model = result.model
            assert model is not None
            spec = self._model_spec(model)
            err = await self._serving_error(model, endpoint)
            if err is None and spec is not None and (spec.test_limits or spec.chunk_lines):
                # Re-run with the model's own limits and chunk size, over the copy the first pass made.
                copy = {**doc, "model": model, "input": {"kind": "file", "key": input_object_key(doc)}}
                result = await run_pass(
                    self.store, copy, limits=self._limits(spec),
                    chunk_lines=spec.chunk_lines or self.settings.chunk_lines_default,
                    chunk_max_bytes=self.settings.chunk_max_bytes,
                )
            elif err is not None:
                result.errors.append(err)
        if not result.ok:
            if (doc.get("input") or {}).get("kind") == "url":
                with contextlib.suppress(Exception):
                    await self.store.delete(input_object_key(doc))
            await self._fail(batch_id, result.errors[:100], model=model or doc.get("model"))
            return
        assert model is not None
        current = await self.batches.get(batch_id)
        if current is None or current["status"] != "validating":
            log.info("batch %s left validating during its pass (%s); not dispatching",
                     batch_id, current and current["status"])
            return
        await self.ledger.upsert(batch_id, result.chunks)
        await self._publish_chunks(doc, model, result.chunks)
        new = await self.batches.transition(batch_id, "validating", "in_progress", set={
            "model": model,
            "chunks_total": len(result.chunks),
            "request_counts": {"total": result.requests, "completed": 0, "failed": 0},
        })
        self.metrics.validated.labels("in_progress").inc()
        if new is not None:
            await self.publisher.publish_outbox(new)
            log.info("batch %s in progress: %d requests in %d chunks", batch_id, result.requests,
                     len(result.chunks))
        # Fast workers may have answered every chunk before the CAS; a cancel may have won it.
        await self.check_done(batch_id)

    async def _publish_chunks(self, doc: dict[str, Any], model: str, chunks: Sequence[ChunkPlan]) -> None:
        if not chunks:
            return
        topic = work_topic(self.settings, model)
        if topic not in self._topics_ready:
            await ensure_topics(self.settings, [topic], partitions=self.settings.work_topic_partitions)
            self._topics_ready.add(topic)
        batch_id, key = doc["_id"], input_object_key(doc)

        async def send(c: ChunkPlan) -> None:
            msg = WorkChunk(batch_id=batch_id, project=doc["project"], chunk=c.index, start=c.start, end=c.end,
                            first_line=c.first_line, line_count=c.line_count, input_key=key,
                            endpoint=doc["endpoint"], model=model)
            # Keyed by chunk, not batch: one batch's chunks spread over every partition (every worker).
            await self.producer.send_json(topic, chunk_id(batch_id, c.index), msg.model_dump())

        for i in range(0, len(chunks), _PUBLISH_WINDOW):
            await asyncio.gather(*(send(c) for c in chunks[i:i + _PUBLISH_WINDOW]))
        self.metrics.chunks_published.inc(len(chunks))

    # ------------------------------------------------------------------ results

    async def handle_result(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            result = WorkResult.model_validate_json(record.value or b"")
        except ValidationError:
            log.warning("skipping a malformed result at %s offset %d", record.topic, record.offset)
            return
        won = await self.ledger.record(result)
        self.metrics.results.labels(result.outcome, str(won).lower()).inc()
        if won:
            self.progress.notify(result.batch_id)
        # Also when the CAS lost: a redelivered last result must still trigger a finalize that a
        # crash prevented the first time.
        await self.check_done(result.batch_id)

    async def check_done(self, batch_id: str) -> None:
        """Finalize the batch if no chunk is pending (and it is in a status that finalizes)."""
        if batch_id in self._finalizing or await self.ledger.count_pending(batch_id):
            return
        doc = await self.batches.get(batch_id)
        if doc is None:
            return
        if doc["status"] == "in_progress":
            self.start_finalize(batch_id, "completed")
        elif doc["status"] == "cancelling":
            self.start_finalize(batch_id, "cancelled")

    async def _recompute_progress(self, batch_id: str) -> None:
        s = await self.ledger.summary(batch_id)
        if self._progress_seq.get(batch_id) == s.finished:
            return
        counts = {"total": s.total_lines, "completed": s.succeeded, "failed": s.failed + s.unfinished_lines}
        new = await self.batches.update_fields(batch_id, {"request_counts": counts},
                                               only_status=("in_progress", "cancelling"), progress_seq=s.finished)
        self._progress_seq[batch_id] = s.finished
        if new is not None:
            await self.publisher.publish_outbox(new)

    # ------------------------------------------------------------------ finalize

    def start_finalize(self, batch_id: str, outcome: Outcome) -> None:
        if batch_id in self._finalizing:
            return
        self.progress.forget(batch_id)
        self._finalizing[batch_id] = asyncio.create_task(self._finalize(batch_id, outcome),
                                                         name=f"finalize:{batch_id}")

    async def _finalize(self, batch_id: str, outcome: Outcome) -> None:
        started = time.perf_counter()
        try:
            done = await self.finalizer.finalize(batch_id, outcome)
            self._finalize_failed.discard(batch_id)
            self._progress_seq.pop(batch_id, None)
            if done:
                self.metrics.finalized.labels(outcome).inc()
                self.metrics.finalize_seconds.observe(time.perf_counter() - started)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The next sweep retries it (the batch is still in_progress/finalizing/cancelling).
            self._finalize_failed.add(batch_id)
            log.exception("finalizing %s as %s failed; the sweep will retry", batch_id, outcome)
        finally:
            self._finalizing.pop(batch_id, None)

    # ------------------------------------------------------------------ sweep

    async def sweep(self, *, first: bool = False) -> None:
        """Expiry, cancel timeout, orphaned finalizes, lost finalize triggers, stale outbox events."""
        now = time.time()
        fields = ("status", "expires_at", "cancelling_at", "finalizing_at", OUTCOME_FIELD)
        async for doc in self.batches.in_statuses(("in_progress", "cancelling", "finalizing"), fields):
            batch_id, status = doc["_id"], doc["status"]
            if batch_id in self._finalizing:
                continue
            if status == "in_progress":
                if (doc.get("expires_at") or float("inf")) <= now:
                    self.start_finalize(batch_id, "expired")
                elif not await self.ledger.count_pending(batch_id):
                    self.start_finalize(batch_id, "completed")
            elif status == "cancelling":
                timed_out = (doc.get("cancelling_at") or now) + self.settings.cancel_timeout_seconds <= now
                if timed_out or not await self.ledger.count_pending(batch_id):
                    self.start_finalize(batch_id, "cancelled")
            else:  # finalizing: resume it if its dispatcher died (or our own attempt failed)
                stale = (doc.get("finalizing_at") or 0) + self.settings.finalize_stale_seconds <= now
                if first or stale or batch_id in self._finalize_failed:
                    self.start_finalize(batch_id, doc.get(OUTCOME_FIELD) or "completed")
        await self.publisher.republish_stale(self.settings.outbox_stale_seconds)

    # ------------------------------------------------------------------ loops

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and sweep until `stop` is set; then leave the consumer groups cleanly."""
        s = self.settings
        events = Consumer(s, [batch_events_topic(s)], group_id=dispatcher_group(s), client_id="offhours-dispatcher",
                          **consumer_options(s))
        results = Consumer(s, [work_results_topic(s)], group_id=f"{dispatcher_group(s)}.results",
                           client_id="offhours-dispatcher", **consumer_options(s))
        try:
            # Concurrently: each group join waits out the broker's initial rebalance delay (3 s on Tansu).
            await asyncio.gather(events.start(), results.start())
            tasks = [
                asyncio.create_task(self._consume(events, self.handle_event, stop), name="events"),
                asyncio.create_task(self._consume(results, self.handle_result, stop), name="results"),
                asyncio.create_task(self._sweep_loop(stop), name="sweep"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a loop only ends early by raising: surface it
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await asyncio.gather(events.stop(), results.stop(), return_exceptions=True)
            await self.close()

    async def close(self) -> None:
        await self.progress.close()
        tasks = list(self._finalizing.values())
        for task in tasks:
            task.cancel()  # a finalize interrupted here is resumed by the next dispatcher's first sweep
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _consume(
        self, consumer: Consumer, handle: Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]],
        stop: asyncio.Event,
    ) -> None:
        while not stop.is_set():
            records = await consumer.getmany(timeout_ms=500)
            for record in records:
                # Retried in place, not skipped: one batch's events stay in sequence. Stopped first:
                # the record stays uncommitted and is redelivered.
                try:
                    await retry_until_stopped(functools.partial(handle, record), stop=stop,
                                              what=f"handling {record.topic} offset {record.offset}")
                except Stopped:
                    return
            if records:
                await consumer.commit(records)

    async def _sweep_loop(self, stop: asyncio.Event) -> None:
        first = True
        while not stop.is_set():
            try:
                await self.sweep(first=first)
                first = False
            except Exception:
                log.exception("sweep failed; retrying at the next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval_seconds)


def _plan(doc: dict[str, Any]) -> ChunkPlan:
    return ChunkPlan(int(doc["index"]), int(doc["start"]), int(doc["end"]), int(doc["first_line"]),
                     int(doc["line_count"]))
