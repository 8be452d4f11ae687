"""A poll's deliveries into MongoDB, first attempts included: one write per delivery in the common case.

Each new delivery whose target has room in the pool is attempted at once, before its document is
written. If the attempt ends within FIRST_ATTEMPT_WAIT_S its outcome goes into the insert; if not,
the document is inserted claimed by this process and the result is written when the attempt ends
(results.py). The rest (the overflow) is inserted unclaimed, for the scheduler. Nothing is
committed to Kafka before the insert, so a crash in between means the events are redelivered and
sent again, with the same webhook-ids: at-least-once, and receivers de-duplicate on that header.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord

from services.notifier.attempts import Attempts, Claims, Outcome
from services.notifier.deliveries import DeliveryStore, finish_update, with_outcome
from services.notifier.intake import Intake
from services.notifier.metrics import NotifierMetrics
from services.notifier.pool import DeliveryPool, receiving_host
from services.notifier.results import ResultWriter
from services.notifier.schedule import Alarm
from services.runtime.retry import Stopped, retry_until_stopped

log = logging.getLogger(__name__)

# How long to wait for first attempts so that their outcome rides in the delivery's insert.
FIRST_ATTEMPT_WAIT_S = 1.0

Doc = dict[str, Any]


@dataclass(eq=False)
class _FirstAttempt:
    doc: Doc
    claim: str
    endpoint: Mapping[str, Any] | None
    outcome: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(eq=False)
class Admission:
    """Gets a poll's deliveries into MongoDB, each attempted once first where its target has room."""

    intake: Intake
    deliveries: DeliveryStore
    pool: DeliveryPool
    claims: Claims
    attempts: Attempts
    results: ResultWriter
    alarm: Alarm
    metrics: NotifierMetrics
    # delivery ids of the polls being handled now
    _being_written: set[str] = field(default_factory=set, init=False)

    async def admit(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], stop: asyncio.Event,
        attempted: asyncio.Event | None = None,
    ) -> bool:
        """Turn these events into deliveries, durably; True once they are all in MongoDB (commit then).

        Raises on a failed read before anything was sent (the caller retries); a failed insert is
        retried here, so nothing is sent twice because of it. False: `stop` was set before the
        insert succeeded. `attempted` is set when the first attempts are over and only the insert
        remains.
        """
        docs, endpoint_of = await self.intake.deliveries_for(records)
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
        self, docs: list[Doc], endpoint_of: Mapping[str, Doc], stop: asyncio.Event, attempted: asyncio.Event | None,
    ) -> bool:
        now = time.time()
        firsts: list[_FirstAttempt] = []
        overall_room = self.pool.queued_overall - self.pool.queued
        planned: Tally[str] = Tally()
        for doc in docs:
            target = doc["target"]
            if planned.total() < overall_room and planned[target] < self.pool.room(target):
                planned[target] += 1
                doc["claim"] = self.claims.token()
                doc["lease_until"] = now + self.claims.lease_s
                first = _FirstAttempt(doc, doc["claim"], endpoint_of.get(doc["_id"]))
                firsts.append(first)
                url = first.endpoint["url"] if first.endpoint is not None else doc.get("callback_url")
                self.pool.submit(target, functools.partial(self._first_attempt, first), force=True,
                                 host=receiving_host(url) if url else None)
        if firsts:
            await asyncio.wait([f.outcome for f in firsts], timeout=FIRST_ATTEMPT_WAIT_S)
        finished_first: dict[str, Doc] = {}
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
        created = await self._insert(rows, stop)
        if created is None:
            return False  # shutting down: these events are handled again (and resent) by the next notifier
        for first in late:
            # Still running when its (claimed) document was written: record the result when it ends.
            first.outcome.add_done_callback(functools.partial(self._record_late, first))
        self.metrics.deliveries_created.inc(len(created))
        if any(d["_id"] in created and d.get("claim") is None for d in docs):
            self.alarm.wake_at(now)  # overflow: the scheduler takes those when their target has room
        return True

    async def _insert(self, rows: list[Doc], stop: asyncio.Event) -> set[str] | None:
        """The ids inserted now, retried until it succeeds; None when `stop` was set first."""
        step = functools.partial(self.deliveries.create_many, rows)
        if stop.is_set():
            # Stopping: one try all the same. The first attempts in these rows were sent already, and
            # recording them spares their receivers a resend by the next notifier.
            try:
                return await step()
            except Exception:
                log.warning("recording deliveries failed while stopping", exc_info=True)
                return None
        try:
            return await retry_until_stopped(step, what="recording deliveries", stop=stop,
                                             first_delay=0.2, max_delay=30.0)
        except Stopped:
            return None

    async def _first_attempt(self, first: _FirstAttempt) -> None:
        try:
            first.outcome.set_result(await self.attempts.attempt(first.doc, first.endpoint))
        except BaseException:
            first.outcome.cancel()  # no outcome: its claim lapses and the scheduler retries it (the pool logs why)
            raise

    def _record_late(self, first: _FirstAttempt, outcome: asyncio.Future[Outcome]) -> None:
        if outcome.cancelled():
            return
        attempt, next_at, finished = outcome.result()
        self.results.put(finish_update(first.doc, first.claim, attempt, next_at=next_at, now=finished))
