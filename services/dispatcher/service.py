"""The dispatcher: batch events in, work chunks out; results in, finished files out.

Validated chunks wait in the ledger and are admitted to their model's work topic a window at a time,
in priority, deadline and fair-share order (services/dispatcher/admission.py, docs/scheduling.md).

Three loops share one process (docs/architecture.md):
- events (`{prefix}.batch.events`, group `{prefix}-dispatcher`): `batch.created` -> validate + dispatch,
  `batch.cancelling` -> finalize once nothing is pending. Handled concurrently (validation passes
  bounded overall and per project, so one slow input delays no other batch); an offset is committed
  once its record and every record before it on its partition are handled.
- results (`{prefix}.work.results`, group `{prefix}-dispatcher.results`): ledger CAS, throttled
  progress, and finalize when the last chunk is in (finalize runs as a task, so one batch's
  finalize never holds up another batch's results).
- sweep (timer): validation deadline, completion before expiry, cancel timeout, finalizes orphaned
  by a dead dispatcher, results whose finalize trigger was lost, re-publication of chunks whose work
  or result was lost, clean-up a dead finalize left behind, and re-publication of stale outbox events.

Every step is idempotent, so any number of dispatchers may run and any of them may die at any
point: the uncommitted record is redelivered, or the sweep picks the batch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Consumer, Producer, consumer_options
from events.topics import batch_events_topic, ensure_topics, work_results_topic, work_topic
from schemas.openai_objects import TERMINAL_STATUSES
from schemas.work import WorkChunk, WorkResult, chunk_id, input_object_key
from services.dispatcher.admission import BATCH_FIELDS, Admission
from services.dispatcher.finalize import OUTCOME_FIELD, Finalizer, Outcome
from services.dispatcher.progress import ProgressThrottle
from services.dispatcher.validate import InputLimits, PassResult, URLFetch, located, run_pass
from services.inference.registry import ModelSpec, load_registry
from services.runtime.retry import Stopped, retry_until_stopped
from services.settings import Settings
from services.state.batches import CLEANUP_FIELD, BatchStore
from services.state.files import FileStore
from services.state.ledger import ChunkLedger, ChunkPlan
from services.state.outbox import EventPublisher
from services.state.projects import ProjectStore
from services.state.workers import live_models
from services.stores.s3 import ObjectStore

log = logging.getLogger(__name__)

_PUBLISH_WINDOW = 256  # chunk messages in flight at once while dispatching a batch
# Event handlers in flight before the events loop stops fetching: far above validation_concurrency,
# since most records (progress, status events) are handled at once and a waiting pass costs little.
_MAX_HANDLERS = 10_000
_ESTIMATE_WEIGHT = 0.2  # weight of the newest chunk time in a model's moving estimate
PLAN_FIELD = "dispatch_plan"


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
        self.commit_failures = Counter("offhours_dispatcher_commit_failures",
                                       "Offset commits that failed (a rebalance took the partition, the broker was "
                                       "away); the records are redelivered.", ("loop",), registry=registry)
        self.chunks_republished = Counter("offhours_dispatcher_chunks_republished",
                                          "Pending chunks published again: their work or their result was lost, "
                                          "or their batch.created was redelivered.", ("why",), registry=registry)


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
        registry = registry or CollectorRegistry()
        self.publisher = EventPublisher(self.batches, producer, settings, registry=registry)
        self.finalizer = Finalizer(batches=self.batches, ledger=self.ledger, store=store, files=files,
                                   publisher=self.publisher, max_line_bytes=settings.max_line_bytes)
        self.progress = ProgressThrottle(self._recompute_progress, settings.progress_interval_seconds)
        self.metrics = DispatcherMetrics(registry)
        self.projects = ProjectStore(db, settings)
        self.admission = Admission(settings, db=db, ledger=self.ledger, projects=self.projects,
                                   publish=self._publish_chunks, registry=registry)
        self._quotas_gauged_at = 0.0
        self._finalizing: dict[str, asyncio.Task[None]] = {}
        self._finalize_failed: set[str] = set()
        self._progress_seq: dict[str, int] = {}
        self._topics_ready: set[str] = set()
        self.url_fetch = URLFetch.from_settings(settings)
        self._validation_slots = asyncio.Semaphore(max(1, settings.validation_concurrency))
        self._project_slots: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._batch_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._validating: set[str] = set()
        self._chunk_seconds: dict[str, float] = {}  # model -> moving estimate of publish-to-result time
        self._model_of: dict[str, str] = {}  # batch -> model, for results of batches running here

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
            await self._on_cancelling(batch_id)
            await self.check_done(batch_id)

    async def _on_cancelling(self, batch_id: str) -> None:
        """A cancelling batch's chunks that were never admitted never ran: close them now, so the cancel
        waits only for the chunks in flight."""
        self.admission.forget(batch_id)
        await self.ledger.abandon_queued(batch_id)

    async def on_created(self, batch_id: str) -> None:
        # One handler per batch at a time here: a redelivery racing the first delivery waits, then
        # finds the batch dispatched.
        async with self._held(self._batch_locks, batch_id, asyncio.Lock):
            doc = await self.batches.get(batch_id)
            if doc is None:
                log.warning("batch.created for unknown batch %s", batch_id)
                return
            if doc["status"] == "validating" and doc.get(PLAN_FIELD):
                # The pass ran already (this is a redelivery): finish from its plan, never a new pass.
                await self._resume_dispatch(doc, doc[PLAN_FIELD])
            elif doc["status"] == "validating":
                async with self._validation_slot(str(doc["project"])):
                    doc = await self.batches.get(batch_id)  # it may have moved on while it waited
                    if doc is None or doc["status"] != "validating":
                        return
                    started = time.perf_counter()
                    self._validating.add(batch_id)
                    try:
                        await self.validate_and_dispatch(doc)
                    finally:
                        self._validating.discard(batch_id)
                    self.metrics.validation_seconds.observe(time.perf_counter() - started)
            elif doc["status"] == "in_progress":
                # Redelivered after the CAS (we died before committing): re-send what was admitted and is
                # still pending, in case its messages were lost (duplicates only cost a skipped attempt);
                # queue again what waits for admission.
                pending = [_plan(c) for c in await self.ledger.admitted_pending(batch_id)]
                await self._republish(doc, str(doc["model"]), pending, why="redelivered")
                await self.admission.load(doc, str(doc["model"]))

    @contextlib.asynccontextmanager
    async def _held(self, table: dict[str, Any], key: str, make: Callable[[], Any]) -> Any:
        """Hold the lock/semaphore `table[key]` (made on first use, dropped when nobody holds or waits)."""
        entry, users = table.get(key) or (make(), 0)
        table[key] = (entry, users + 1)
        try:
            async with entry:
                yield
        finally:
            entry, users = table[key]
            if users <= 1:
                del table[key]
            else:
                table[key] = (entry, users - 1)

    @contextlib.asynccontextmanager
    async def _validation_slot(self, project: str) -> Any:
        """A project's slot first, then a global one: a project with many batches queues behind its own
        few slots and never holds more than `validation_per_project` of the shared ones."""
        per_project = max(1, self.settings.validation_per_project)
        async with (self._held(self._project_slots, project, lambda: asyncio.Semaphore(per_project)),
                    self._validation_slots):
            yield

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
        new = await self.batches.transition(batch_id, "validating", "failed",
                                            set={"errors": errors, CLEANUP_FIELD: True, **fields})
        self.metrics.validated.labels("failed").inc()
        if new is not None:
            await self.publisher.publish_outbox(new)
            await self.finalizer.clean_up(new)  # input pin, URL copy, chunks of a plan cut short
            log.info("batch %s failed validation: %s", batch_id, errors[0]["code"])

    def _validation_timeout(self) -> dict[str, Any]:
        return located("validation_timeout",
                       f"the batch was still validating {self.settings.validating_timeout_seconds:g}s after it "
                       f"was created", param="input_file_id")

    async def _passes(self, doc: dict[str, Any]) -> tuple[PassResult, str | None, dict[str, int]]:
        """The validation pass (two for a URL input whose model the lines name): result, model, chunk settings."""
        endpoint, model = doc["endpoint"], doc.get("model")
        spec = self._model_spec(model)
        cut = {"chunk_lines": spec.chunk_lines if spec and spec.chunk_lines else self.settings.chunk_lines_default,
               "chunk_max_bytes": self.settings.chunk_max_bytes}
        source = doc
        if (doc.get("input") or {}).get("kind") == "url" and await self.store.head(input_object_key(doc)) is not None:
            # A pass that died after its copy was complete (an upload appears whole or not at all):
            # read the copy, so the URL is fetched once.
            source = {**doc, "input": {"kind": "file", "key": input_object_key(doc)}}
        result = await run_pass(self.store, source, limits=self._limits(spec), url=self.url_fetch, **cut)
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
                cut["chunk_lines"] = spec.chunk_lines or self.settings.chunk_lines_default
                copy = {**doc, "model": model, "input": {"kind": "file", "key": input_object_key(doc)}}
                result = await run_pass(self.store, copy, limits=self._limits(spec), **cut)
            elif err is not None:
                result.errors.append(err)
        return result, model, cut

    async def validate_and_dispatch(self, doc: dict[str, Any]) -> None:
        batch_id, endpoint, model = doc["_id"], doc["endpoint"], doc.get("model")
        if model is not None and (err := await self._serving_error(model, endpoint)):
            await self._fail(batch_id, [err])
            return
        left = float(doc.get("created_at") or time.time()) + self.settings.validating_timeout_seconds - time.time()
        try:
            async with asyncio.timeout(max(0.0, left)):
                result, model, cut = await self._passes(doc)
        except TimeoutError:
            await self._fail(batch_id, [self._validation_timeout()], model=model)
            return
        if not result.ok:
            await self._fail(batch_id, result.errors[:100], model=model or doc.get("model"))
            return
        assert model is not None
        plan = {"model": model, "chunks_total": len(result.chunks), "requests": result.requests, **cut}
        # The plan goes on the batch before its chunks: from here on a redelivered batch.created
        # finishes this dispatch instead of running a pass again (which could fetch a URL twice,
        # or cut differently under a ledger built from this cut).
        if await self.batches.update_fields(batch_id, {PLAN_FIELD: plan}, only_status="validating") is None:
            current = await self.batches.get(batch_id)
            log.info("batch %s left validating during its pass (%s); not dispatching",
                     batch_id, current and current["status"])
            return
        await self.ledger.upsert(batch_id, result.chunks, model=model, project=str(doc["project"]), admitted=False)
        await self.admission.add(doc, model, [(c.index, c.line_count) for c in result.chunks])
        await self._enter_in_progress(batch_id, plan)

    async def _resume_dispatch(self, doc: dict[str, Any], plan: dict[str, Any]) -> None:
        """Finish a dispatch whose plan was recorded: complete the ledger, re-send pending chunks, CAS."""
        batch_id, model = doc["_id"], str(plan["model"])
        if await self.ledger.count(batch_id) < int(plan["chunks_total"]):
            # Died while writing the chunks. Cut again from the stored bytes (for a URL input its copy,
            # complete before the plan was written) with the plan's own settings: the same chunks.
            spec = self._model_spec(model)
            stored = {**doc, "model": model, "input": {"kind": "file", "key": input_object_key(doc)}}
            result = await run_pass(self.store, stored, limits=self._limits(spec),
                                    chunk_lines=int(plan["chunk_lines"]), chunk_max_bytes=int(plan["chunk_max_bytes"]))
            if not result.ok or len(result.chunks) != int(plan["chunks_total"]):
                log.error("batch %s: its stored input no longer cuts as planned", batch_id)
                await self._fail(batch_id, [located("input_unavailable", "the batch's input changed in storage",
                                                    param="input_file_id")], model=model)
                return
            await self.ledger.upsert(batch_id, result.chunks, model=model, project=str(doc["project"]),
                                     admitted=False)
        pending = [_plan(c) for c in await self.ledger.admitted_pending(batch_id)]
        await self._republish(doc, model, pending, why="redelivered")
        await self.admission.load(doc, model)
        await self._enter_in_progress(batch_id, plan)

    async def _enter_in_progress(self, batch_id: str, plan: dict[str, Any]) -> None:
        new = await self.batches.transition(batch_id, "validating", "in_progress", set={
            "model": plan["model"],
            "chunks_total": plan["chunks_total"],
            "request_counts": {"total": plan["requests"], "completed": 0, "failed": 0},
        })
        self.metrics.validated.labels("in_progress").inc()
        if new is not None:
            await self.publisher.publish_outbox(new)
            log.info("batch %s in progress: %d requests in %d chunks", batch_id, plan["requests"],
                     plan["chunks_total"])
        else:
            current = await self.batches.get(batch_id)
            if current is not None and current["status"] in TERMINAL_STATUSES:
                # Failed (its deadline) while its chunks were written: they are garbage now.
                await self.finalizer.clean_up(current)
        # Fast workers may have answered every chunk before the CAS; a cancel may have won it.
        await self.check_done(batch_id)

    async def _republish(self, doc: dict[str, Any], model: str, chunks: Sequence[ChunkPlan], *, why: str) -> None:
        if not chunks:
            return
        if why == "lost":
            self._topics_ready.discard(work_topic(self.settings, model))  # lost with a deleted topic, maybe
        await self._publish_chunks(doc, model, chunks)
        await self.ledger.mark_published(doc["_id"], [c.index for c in chunks])
        self.metrics.chunks_republished.labels(why).inc(len(chunks))

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
        settled = await self.ledger.settle(result)
        won = settled is not None
        self.metrics.results.labels(result.outcome, str(won).lower()).inc()
        if settled is not None:
            self.progress.notify(result.batch_id)
            model = await self._model_for(result.batch_id)
            if model is not None:
                if settled.seconds is not None and result.outcome == "done":
                    self._observe(model, settled.seconds)
                    self.admission.observe(model, result.succeeded + result.failed)
                self.admission.kick(model)  # its window place is free: the next chunk goes out
        else:
            await self._drop_losing_parts(result)
        # Also when the CAS lost: a redelivered last result must still trigger a finalize that a
        # crash prevented the first time.
        await self.check_done(result.batch_id)

    async def _model_for(self, batch_id: str) -> str | None:
        model = self._model_of.get(batch_id) or self.admission.model_of(batch_id)
        if model is None:
            doc = await self.batches.get(batch_id)
            if doc is None or not doc.get("model"):
                return None
            if len(self._model_of) >= _MAX_HANDLERS:  # batches finalized by another dispatcher never pop
                self._model_of.clear()
            model = self._model_of[batch_id] = str(doc["model"])
        return model

    def _observe(self, model: str, seconds: float) -> None:
        """Feed one chunk's publish-to-result time into its model's moving estimate."""
        old = self._chunk_seconds.get(model)
        self._chunk_seconds[model] = seconds if old is None else old + _ESTIMATE_WEIGHT * (seconds - old)

    async def _drop_losing_parts(self, result: WorkResult) -> None:
        """A result that lost its chunk's CAS wrote parts nobody will read: delete them now, since the
        batch's own clean-up may have run already (a duplicate attempt that finished late)."""
        keys = [k for k in (result.output_key, result.error_key) if k]
        if not keys:
            return
        chunk = await self.ledger.get(result.batch_id, result.chunk)
        if chunk is not None and chunk.get("attempt") == result.attempt:
            return  # a redelivery of the winning attempt: those parts are the chunk's output
        for key in keys:
            try:
                await self.store.delete(key)
            except Exception:  # garbage either way; the batch's clean-up deletes its whole parts prefix
                log.warning("deleting a losing attempt's part of %s failed", result.batch_id, exc_info=True)

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
        self._model_of.pop(batch_id, None)
        self.admission.forget(batch_id)
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
        """Deadlines, orphaned finalizes, lost finalize triggers, lost chunks, left-over clean-ups, stale events."""
        now = time.time()
        fields = ("status", "created_at", "expires_at", "cancelling_at", "finalizing_at", "model", OUTCOME_FIELD,
                  PLAN_FIELD, *BATCH_FIELDS)
        running: set[str] = set()
        async for doc in self.batches.in_statuses(("validating", "in_progress", "cancelling", "finalizing"), fields):
            batch_id, status = doc["_id"], doc["status"]
            if status in ("validating", "in_progress"):
                running.add(batch_id)
            if batch_id in self._finalizing:
                continue
            if status == "validating":
                timed_out = (doc.get("created_at") or now) + self.settings.validating_timeout_seconds <= now
                if timed_out and batch_id not in self._validating and batch_id not in self._batch_locks:
                    await self._validation_overdue(batch_id, doc)
            elif status == "in_progress":
                # "Nothing pending" first: a batch whose every chunk is done completes even when the
                # sweep only finds it after its expiry.
                if not await self.ledger.count_pending(batch_id):
                    self.start_finalize(batch_id, "completed")
                elif (doc.get("expires_at") or float("inf")) <= now:
                    self.start_finalize(batch_id, "expired")
                else:
                    await self._republish_lost(batch_id, doc.get("model"), now)
                    if doc.get("model") and not self.admission.knows(batch_id):
                        # Validated by another dispatcher, or before a restart: queue what waits in the ledger.
                        await self.admission.load(doc, str(doc["model"]))
            elif status == "cancelling":
                await self._on_cancelling(batch_id)
                timed_out = (doc.get("cancelling_at") or now) + self.settings.cancel_timeout_seconds <= now
                if timed_out or not await self.ledger.count_pending(batch_id):
                    self.start_finalize(batch_id, "cancelled")
            else:  # finalizing: resume it if its dispatcher died (or our own attempt failed)
                stale = (doc.get("finalizing_at") or 0) + self.settings.finalize_stale_seconds <= now
                if first or stale or batch_id in self._finalize_failed:
                    self.start_finalize(batch_id, doc.get(OUTCOME_FIELD) or "completed")
        self.admission.prune(running)
        for model in self.admission.models():
            self.admission.kick(model)  # places freed by results another dispatcher counted
        if now - self._quotas_gauged_at >= max(self.settings.sweep_interval_seconds, 5.0):
            self._quotas_gauged_at = now
            await self.admission.gauge_quotas()
        for doc in await self.batches.with_pending_cleanup():
            if doc["_id"] not in self._finalizing:  # a finalize running here cleans up itself
                await self.finalizer.clean_up(doc)
        await self.publisher.republish_stale(self.settings.outbox_stale_seconds)

    async def _validation_overdue(self, batch_id: str, doc: dict[str, Any]) -> None:
        """A batch past its validation deadline with no pass running here: its dispatcher died or hangs."""
        if doc.get(PLAN_FIELD):
            full = await self.batches.get(batch_id)
            if full is not None and full["status"] == "validating":
                # The pass finished and its work may be out already: finish the dispatch rather than waste it.
                async with self._held(self._batch_locks, batch_id, asyncio.Lock):
                    await self._resume_dispatch(full, full[PLAN_FIELD])
            return
        log.warning("batch %s still validating %.0fs after creation; failing it", batch_id,
                    self.settings.validating_timeout_seconds)
        await self._fail(batch_id, [self._validation_timeout()])

    def republish_after(self, model: str | None) -> float:
        """Seconds a pending chunk may go without a result before it counts as lost."""
        estimate = self._chunk_seconds.get(model or "")
        floor = self.settings.chunk_republish_min_seconds
        return floor if estimate is None else max(floor, self.settings.chunk_republish_factor * estimate)

    async def _republish_lost(self, batch_id: str, model: str | None, now: float) -> None:
        """Re-send the batch's pending chunks that have waited past the model's threshold for a result:
        their work message or their result was lost (a recreated topic, retention, a broker that lost
        its tail). A chunk that was merely slow costs one skipped duplicate; a lost one would otherwise
        hold the batch until it expires."""
        if model and model not in self._chunk_seconds:
            # Nothing measured here yet (a restart): seed the estimate from the batch's finished chunks.
            seen = await self.ledger.chunk_seconds(batch_id)
            if seen:
                self._chunk_seconds[model] = statistics.median(seen)
        stale = await self.ledger.pending_published_before(batch_id, now - self.republish_after(model))
        if not stale:
            return
        doc = await self.batches.get(batch_id)
        if doc is None or doc["status"] != "in_progress":
            return
        log.warning("batch %s: %d chunk(s) without a result for %.0fs; publishing them again", batch_id,
                    len(stale), self.republish_after(model))
        await self._republish(doc, str(doc["model"]), [_plan(c) for c in stale], why="lost")

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
                asyncio.create_task(self._consume_concurrently(events, self.handle_event, stop), name="events"),
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
        await self.admission.close()
        await self.progress.close()
        tasks = list(self._finalizing.values())
        for task in tasks:
            task.cancel()  # a finalize interrupted here is resumed by the next dispatcher's first sweep
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _consume(
        self, consumer: Consumer, handle: Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]],
        stop: asyncio.Event,
    ) -> None:
        """One record at a time (results: each is a few quick writes, and finalize runs as a task)."""
        while not stop.is_set():
            records = await consumer.getmany(timeout_ms=500)
            for record in records:
                if not await self._handle(record, handle, stop):
                    return  # stopped: the record stays uncommitted and is redelivered
            if records:
                await self._commit(consumer, records, "results")

    async def _handle(
        self, record: ConsumerRecord[bytes, bytes], handle: Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]],
        stop: asyncio.Event,
    ) -> bool:
        """Handle the record, retried in place until it succeeds; False when `stop` came first."""
        try:
            await retry_until_stopped(functools.partial(handle, record), stop=stop,
                                      what=f"handling {record.topic} offset {record.offset}")
        except Stopped:
            return False
        return True

    async def _commit(self, consumer: Consumer, records: Sequence[ConsumerRecord[bytes, bytes]], loop: str) -> None:
        # A failed commit (the partition went to another member in a rebalance, the broker was away)
        # only means a redelivery, which every handler tolerates: count it and carry on.
        if not await consumer.try_commit(records):
            self.metrics.commit_failures.labels(loop).inc()

    async def _consume_concurrently(
        self, consumer: Consumer, handle: Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]],
        stop: asyncio.Event,
    ) -> None:
        """Every record handled in a task of its own; per partition, offsets are committed in order, up to
        the first record not handled yet, so a crash redelivers exactly what was not finished."""
        queues: dict[TopicPartition, deque[tuple[ConsumerRecord[bytes, bytes], asyncio.Task[bool]]]] = {}
        running: set[asyncio.Task[bool]] = set()
        try:
            while not stop.is_set():
                if len(running) >= _MAX_HANDLERS:
                    await asyncio.wait(running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                else:
                    for record in await consumer.getmany(timeout_ms=200):
                        task = asyncio.create_task(self._handle(record, handle, stop),
                                                   name=f"event:{record.partition}:{record.offset}")
                        running.add(task)
                        task.add_done_callback(running.discard)
                        queues.setdefault(TopicPartition(record.topic, record.partition), deque()).append(
                            (record, task))
                finished: list[ConsumerRecord[bytes, bytes]] = []
                for queue in queues.values():
                    last = None
                    while queue and queue[0][1].done():
                        if queue[0][1].cancelled() or queue[0][1].exception() or not queue[0][1].result():
                            break  # stopped mid-handling: neither it nor anything after it is committed
                        last = queue.popleft()[0]
                    if last is not None:
                        finished.append(last)
                if finished:
                    await self._commit(consumer, finished, "events")
        finally:
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

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
