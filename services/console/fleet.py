"""Fleet gauges for operators, on the api's `/metrics`: what no single service can count by itself.

The dispatcher and the workers count what they do, not what is waiting: a batch that nobody moves
shows up in no counter. These gauges read the shared state (batches by status, how long the oldest
has not changed, live workers by model) every `FLEET_REFRESH_SECONDS`, so the alert rules in
infra/prometheus/ can say "stuck" and "worker lost". Every api process reports the same global
numbers: aggregate them with `max`, never `sum` (infra/grafana/ does).

Only counts and ages leave the process: `/metrics` answers without a key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from pymongo.asynchronous.database import AsyncDatabase

from services.state.batches import ACTIVE_STATUSES, BatchStore
from services.state.workers import live_models

log = logging.getLogger(__name__)

FLEET_REFRESH_SECONDS = 15.0
# Non-terminal batches are few (the test model allows 2 per project; real ones take hours); the
# cap keeps one scrape bounded if a backlog ever builds up.
_SCAN_LIMIT = 100_000


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry, db: AsyncDatabase[Any], liveness_seconds: float) -> None:
        self._db = db
        self._batches = BatchStore(db)
        self._liveness = liveness_seconds
        self._models_seen: set[str] = set()
        self.active = Gauge(
            "offhours_batches_active",
            "Batches not yet terminal, by status (every project).",
            ("status",),
            registry=registry,
        )
        self.idle = Gauge(
            "offhours_batch_idle_seconds_max",
            "Longest time any batch of this status has gone without a change (0: none).",
            ("status",),
            registry=registry,
        )
        self.workers = Gauge(
            "offhours_workers_live",
            "Workers whose heartbeat is recent, by model (a model whose workers all left stays listed at 0).",
            ("model",),
            registry=registry,
        )
        self.refreshed = Gauge(
            "offhours_fleet_refreshed_timestamp_seconds",
            "When these fleet gauges were last read from the database.",
            registry=registry,
        )
        for status in ACTIVE_STATUSES:
            self.active.labels(status).set(0)
            self.idle.labels(status).set(0)

    async def refresh(self) -> None:
        now = time.time()
        counts = dict.fromkeys(ACTIVE_STATUSES, 0)
        oldest = dict.fromkeys(ACTIVE_STATUSES, now)
        fields = ("status", "updated_at", "created_at")
        async for doc in self._batches.in_statuses(ACTIVE_STATUSES, fields, limit=_SCAN_LIMIT):
            status = doc.get("status")
            if status not in counts:
                continue
            counts[status] += 1
            changed = doc.get("updated_at") or doc.get("created_at") or now
            oldest[status] = min(oldest[status], float(changed))
        for status in ACTIVE_STATUSES:
            self.active.labels(status).set(counts[status])
            self.idle.labels(status).set(max(0.0, now - oldest[status]))
        models = await live_models(self._db, self._liveness)
        self._models_seen.update(models)
        for model in self._models_seen:
            self.workers.labels(model).set(models[model]["workers"] if model in models else 0)
        self.refreshed.set(now)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Stale gauges show as an old offhours_fleet_refreshed_timestamp_seconds, which an
                # alert watches; the api itself must keep serving.
                log.warning("fleet metrics: refresh failed", exc_info=True)
            await asyncio.sleep(FLEET_REFRESH_SECONDS)
