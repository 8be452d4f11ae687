"""Admission: which chunk goes to a model's work topic next (docs/scheduling.md).

A validated batch's chunks wait in the ledger (`admitted: False`). Per model only a window of chunks
is admitted at a time: live workers x (worker_chunks_in_flight + scheduling_window_margin_chunks),
counted from the ledger (admitted, no counted result), so every dispatcher sees the same count. As
results come back (and at validation, and on every sweep) the free places go to, in this order:

1. the highest priority class with queued work (`metadata.priority`, capped by the project);
2. within it, a batch at risk of missing its deadline — its time left is under
   scheduling_deadline_safety x what the model's queued backlog takes at its measured rate —
   earliest deadline first;
3. otherwise weighted fair share between projects: deficit round robin by lines (`DeficitRoundRobin`);
4. within a project, submission order.

A chunk is admitted by a compare-and-set on its ledger document (`ChunkLedger.admit`); only the
winner publishes it, so several dispatchers holding the same queues never admit a chunk twice. The
queues here are a cache of the ledger: rebuilt from it for any batch this process does not know
(a restart, a batch validated by another dispatcher), and wrong at worst by chunks another dispatcher
admitted first, which lose their CAS here and are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pymongo.asynchronous.database import AsyncDatabase

from services.settings import Settings
from services.state.ledger import ChunkLedger, ChunkPlan
from services.state.projects import ProjectStore, batch_priority, priority_rank
from services.state.workers import live_models

log = logging.getLogger(__name__)

_LIVE_TTL_SECONDS = 1.0  # the live worker count is read at most this often per round
# The batch fields a queue needs: to order it, and to publish its chunks.
BATCH_FIELDS = ("project", "metadata", "created_at", "expires_at", "endpoint", "input", "status", "model")

Publish = Callable[[dict[str, Any], str, Sequence[ChunkPlan]], Awaitable[None]]


# ---------------------------------------------------------------------------- pure ordering


class DeficitRoundRobin:
    """Weighted fair share by lines between projects (Shreedhar & Varghese's deficit round robin).

    Projects with queued work form a ring. On its turn a project is credited `quantum x weight` lines
    once, then takes chunks while its credit covers the next one; then the turn passes on. A project
    whose queue empties leaves the ring and keeps no credit, so idling never banks a burst. Over time
    each active project is admitted lines in proportion to its weight, whatever its chunk sizes.
    """

    def __init__(self) -> None:
        self.ring: list[str] = []
        self.deficit: dict[str, float] = {}
        self.pos = 0
        self._credited = False

    def choose(self, heads: Mapping[str, int], weights: Mapping[str, float]) -> str:
        """The project whose head chunk goes next; `heads`: project -> lines of its next chunk (non-empty)."""
        if not heads:
            raise ValueError("no project has queued work")
        if any(p not in heads for p in self.ring):
            current = self.ring[self.pos] if self.ring else None
            before = sum(1 for p in self.ring[:self.pos] if p in heads)
            self.ring = [p for p in self.ring if p in heads]
            self.deficit = {p: d for p, d in self.deficit.items() if p in heads}
            if current not in heads:
                self._credited = False
            self.pos = before % len(self.ring) if self.ring else 0
        for p in sorted(heads):
            if p not in self.deficit:
                self.ring.append(p)
                self.deficit[p] = 0.0
        # The largest head as the quantum: every project can take at least one chunk per turn.
        quantum = float(max(max(heads.values()), 1))
        while True:
            p = self.ring[self.pos]
            if not self._credited:
                self.deficit[p] += quantum * max(weights.get(p, 1.0), 1e-6)
                self._credited = True
            if self.deficit[p] >= heads[p]:
                self.deficit[p] -= heads[p]
                return p
            self.pos = (self.pos + 1) % len(self.ring)
            self._credited = False


@dataclass
class QueuedBatch:
    """A batch's chunks not admitted yet, in input order, with what orders it."""

    batch_id: str
    project: str
    model: str
    rank: int  # priority class: 0 high, 1 normal, 2 low
    created_at: float
    deadline: float  # epoch seconds the scheduler orders by (expires_at, scaled for benchmarks)
    doc: dict[str, Any]  # what publishing needs: _id, project, endpoint, input
    chunks: deque[tuple[int, int]] = field(default_factory=deque)  # (index, line_count)
    lines: int = 0

    def push(self, index: int, lines: int) -> None:
        self.chunks.append((index, lines))
        self.lines += lines

    def pop(self) -> tuple[int, int]:
        index, lines = self.chunks.popleft()
        self.lines -= lines
        return index, lines


def choose(
    batches: Iterable[QueuedBatch], *, now: float, backlog_seconds: float | None, safety: float,
    drr: dict[int, DeficitRoundRobin], weights: Mapping[str, float],
) -> QueuedBatch | None:
    """The batch whose next chunk is admitted next: priority class, then deadline risk, then weighted
    fair share between projects (`drr`, one per class), then submission order. Pure but for `drr`'s state."""
    waiting = [b for b in batches if b.chunks]
    if not waiting:
        return None
    top = min(b.rank for b in waiting)
    waiting = [b for b in waiting if b.rank == top]
    if backlog_seconds is not None:
        at_risk = [b for b in waiting if b.deadline - now <= safety * backlog_seconds]
        if at_risk:
            return min(at_risk, key=lambda b: (b.deadline, b.created_at, b.batch_id))
    first: dict[str, QueuedBatch] = {}
    for b in waiting:
        head = first.get(b.project)
        if head is None or (b.created_at, b.batch_id) < (head.created_at, head.batch_id):
            first[b.project] = b
    project = drr.setdefault(top, DeficitRoundRobin()).choose(
        {p: b.chunks[0][1] for p, b in first.items()}, weights)
    return first[project]


class RateMeter:
    """Lines a model finished per second over the last `window_s` seconds of results."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, int]] = deque()

    def add(self, lines: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._seen.append((now, lines))
        while self._seen and self._seen[0][0] < now - self.window_s:
            self._seen.popleft()

    def rate(self) -> float | None:
        if len(self._seen) < 2:
            return None
        span = self._seen[-1][0] - self._seen[0][0]
        if span <= 0:
            return None
        return sum(n for _, n in list(self._seen)[1:]) / span


# ---------------------------------------------------------------------------- the service part


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "project")
        self.queued_lines = Gauge("offhours_dispatcher_queued_lines",
                                  "Request lines validated and waiting for admission (this dispatcher's view).",
                                  labels, registry=registry)
        self.in_flight = Gauge("offhours_dispatcher_in_flight_chunks",
                               "Chunks admitted to the model's work topic without a counted result.",
                               labels, registry=registry)
        self.window = Gauge("offhours_dispatcher_admission_window",
                            "Chunks a model may have in flight: live workers x (chunks in flight + margin).",
                            ("model",), registry=registry)
        self.admitted = Counter("offhours_dispatcher_chunks_admitted", "Chunks admitted (rate: admissions/s).",
                                labels, registry=registry)
        self.admitted_lines = Counter("offhours_dispatcher_lines_admitted", "Request lines admitted.",
                                      labels, registry=registry)
        self.admit_lost = Counter("offhours_dispatcher_admit_lost",
                                  "Admissions that lost their ledger CAS (another dispatcher admitted the chunk, "
                                  "or its batch ended).", registry=registry)
        self.enqueued = Gauge("offhours_dispatcher_enqueued_requests",
                              "Requests of the project's batches on the model not finished yet (quota use).",
                              labels, registry=registry)
        self.quota_use = Gauge("offhours_dispatcher_quota_use_ratio",
                               "Enqueued requests / the project's max_enqueued (0 when it has no limit).",
                               labels, registry=registry)


class Admission:
    def __init__(
        self, settings: Settings, *, db: AsyncDatabase[Any], ledger: ChunkLedger, projects: ProjectStore,
        publish: Publish, registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.db = db
        self.ledger = ledger
        self.projects = projects
        self.publish = publish
        self.metrics = AdmissionMetrics(registry)
        self.queues: dict[str, dict[str, QueuedBatch]] = {}  # model -> batch id -> queue
        self._known: dict[str, str] = {}  # batch id -> model, for batches loaded here (even when drained)
        self._drr: dict[str, dict[int, DeficitRoundRobin]] = {}
        self._rates: dict[str, RateMeter] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._live: tuple[float, dict[str, Any]] = (0.0, {})
        self._gauged: dict[str, set[tuple[str, str]]] = {"queued": set(), "in_flight": set(), "quota": set()}

    # ------------------------------------------------------------------ queues

    def knows(self, batch_id: str) -> bool:
        return batch_id in self._known

    def model_of(self, batch_id: str) -> str | None:
        return self._known.get(batch_id)

    async def add(self, doc: Mapping[str, Any], model: str, chunks: Iterable[tuple[int, int]]) -> None:
        """Queue a batch's not-yet-admitted chunks `(index, line_count)` and start an admission round."""
        project = str(doc["project"])
        limits = await self.projects.get(project)
        created = float(doc.get("created_at") or time.time())
        expires = doc.get("expires_at")
        deadline = float("inf") if expires is None else created + self.settings.scheduling_deadline_scale * (
            float(expires) - created)
        queue = QueuedBatch(
            batch_id=str(doc["_id"]), project=project, model=model,
            rank=priority_rank(batch_priority(doc.get("metadata"), limits.max_priority)), created_at=created,
            deadline=deadline,
            doc={"_id": doc["_id"], "project": project, "endpoint": doc["endpoint"], "input": doc.get("input")},
        )
        for index, lines in chunks:
            queue.push(index, lines)
        self.forget(queue.batch_id)
        self._known[queue.batch_id] = model
        if queue.chunks:
            self.queues.setdefault(model, {})[queue.batch_id] = queue
        self.kick(model)

    async def load(self, doc: Mapping[str, Any], model: str) -> None:
        """(Re)build a batch's queue from the ledger: its chunks still waiting for admission."""
        queued = await self.ledger.queued(str(doc["_id"]))
        await self.add(doc, model, [(int(c["index"]), int(c.get("line_count") or 0)) for c in queued])

    def forget(self, batch_id: str) -> None:
        model = self._known.pop(batch_id, None)
        if model is not None:
            self.queues.get(model, {}).pop(batch_id, None)

    def prune(self, active: set[str]) -> None:
        """Forget the batches that are no longer running (finalized, possibly by another dispatcher)."""
        for batch_id in [b for b in self._known if b not in active]:
            self.forget(batch_id)

    def models(self) -> list[str]:
        return [m for m, q in self.queues.items() if q]

    # ------------------------------------------------------------------ measured rate

    def observe(self, model: str, lines: int) -> None:
        """A counted result of `lines` lines: feeds the model's rate (for deadline risk)."""
        meter = self._rates.get(model)
        if meter is None:
            meter = self._rates[model] = RateMeter(self.settings.scheduling_rate_window_seconds)
        meter.add(lines)

    def rate(self, model: str) -> float | None:
        meter = self._rates.get(model)
        return None if meter is None else meter.rate()

    # ------------------------------------------------------------------ rounds

    def kick(self, model: str) -> None:
        """Run an admission round for `model` soon; rounds of one model never overlap, and kicks that
        arrive during a round coalesce into one more round."""
        if model in self._running:
            self._again.add(model)
            return
        self._running[model] = asyncio.create_task(self._rounds(model), name=f"admit:{model}")

    async def _rounds(self, model: str) -> None:
        try:
            while True:
                self._again.discard(model)
                try:
                    await self.admit_round(model)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the next result or sweep kicks again; the ledger is the truth
                    log.exception("admission round for %s failed; the sweep retries", model)
                    return
                if model not in self._again:
                    return
        finally:
            self._running.pop(model, None)

    async def window(self, model: str) -> int:
        stamp, live = self._live
        if time.monotonic() - stamp > _LIVE_TTL_SECONDS:
            live = dict(await live_models(self.db, self.settings.worker_liveness_seconds))
            self._live = (time.monotonic(), live)
        workers = max(1, int((live.get(model) or {}).get("workers") or 0))
        s = self.settings
        return workers * (max(1, s.worker_chunks_in_flight) + max(0, s.scheduling_window_margin_chunks))

    async def admit_round(self, model: str) -> int:
        """Fill the model's free window places; returns how many chunks this call admitted."""
        queue = self.queues.get(model, {})
        in_flight = await self.ledger.in_flight(model)
        window = await self.window(model)
        self.metrics.window.labels(model).set(window)
        free = window - len(in_flight)
        picked: dict[str, tuple[QueuedBatch, list[ChunkPlan]]] = {}
        if free > 0 and queue:
            weights = {p: (await self.projects.get(p)).weight for p in {b.project for b in queue.values()}}
            rate = self.rate(model)
            backlog = None if not rate else sum(b.lines for b in queue.values()) / rate
            drr = self._drr.setdefault(model, {})
            while free > 0:
                batch = choose(queue.values(), now=time.time(), backlog_seconds=backlog,
                               safety=self.settings.scheduling_deadline_safety, drr=drr, weights=weights)
                if batch is None:
                    break
                index, lines = batch.pop()
                if not batch.chunks:
                    queue.pop(batch.batch_id, None)
                try:
                    won = await self.ledger.admit(batch.batch_id, index)
                except Exception:
                    self.forget(batch.batch_id)  # its memory is unsure now: the sweep reloads it from the ledger
                    raise
                if won is None:
                    self.metrics.admit_lost.inc()
                    continue
                picked.setdefault(batch.batch_id, (batch, []))[1].append(_plan(won))
                self.metrics.admitted.labels(model, batch.project).inc()
                self.metrics.admitted_lines.labels(model, batch.project).inc(lines)
                free -= 1
            # Published after the CAS: a crash in between leaves an admitted chunk without its message,
            # which the sweep re-publishes like any lost one.
            await asyncio.gather(*(self.publish(b.doc, model, plans) for b, plans in picked.values()))
        admitted = {b.project: 0 for b, _ in picked.values()}
        for b, plans in picked.values():
            admitted[b.project] += len(plans)
        self._gauge_round(model, queue.values(), in_flight, admitted)
        return sum(admitted.values())

    def _gauge_round(self, model: str, queue: Iterable[QueuedBatch], in_flight: Sequence[Mapping[str, Any]],
                     admitted: Mapping[str, int]) -> None:
        lines: dict[str, int] = {}
        for b in queue:
            lines[b.project] = lines.get(b.project, 0) + b.lines
        # In flight: what the ledger counted before this round, plus what this round admitted.
        flying = dict(admitted)
        for c in in_flight:
            project = str(c.get("project"))
            flying[project] = flying.get(project, 0) + 1
        self._set("queued", self.metrics.queued_lines, model, lines)
        self._set("in_flight", self.metrics.in_flight, model, flying)

    def _set(self, kind: str, gauge: Gauge, model: str, values: Mapping[str, int]) -> None:
        """Set a (model, project) gauge family for one model; projects gone from it are removed."""
        seen = self._gauged[kind]
        for key in [k for k in seen if k[0] == model and k[1] not in values]:
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
            seen.discard(key)
        for project, n in values.items():
            gauge.labels(model, project).set(n)
            seen.add((model, project))

    async def gauge_quotas(self) -> None:
        """Quota use per (model, project), from the batches (the sweep calls it)."""
        enqueued = await self.projects.enqueued_by_model()
        seen = self._gauged["quota"]
        for model, project in [k for k in seen if (k[1], k[0]) not in enqueued]:
            for gauge in (self.metrics.enqueued, self.metrics.quota_use):
                with contextlib.suppress(KeyError):
                    gauge.remove(model, project)
            seen.discard((model, project))
        for (project, model), n in enqueued.items():
            limit = (await self.projects.get(project)).max_enqueued
            self.metrics.enqueued.labels(model, project).set(n)
            self.metrics.quota_use.labels(model, project).set(n / limit if limit > 0 else 0.0)
            seen.add((model, project))

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no admission round is running (tests, and a clean stop)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)


def _plan(doc: Mapping[str, Any]) -> ChunkPlan:
    return ChunkPlan(int(doc["index"]), int(doc["start"]), int(doc["end"]), int(doc["first_line"]),
                     int(doc["line_count"]))

