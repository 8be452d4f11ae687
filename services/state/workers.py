"""Live workers, and so which models can run right now: those with a worker that heartbeated recently.

Workers upsert one document each into the `workers` collection:
`{_id: worker_id, model, endpoints: [...], last_seen: <epoch float>, host, pid, started_at, stats}`.
`GET /v1/models` lists what `live_models` finds, and the dispatcher fails a batch whose model
has no live worker ("the model must be served"). A worker that shuts down cleanly removes its
document at once; one that dies simply ages out.
"""

from __future__ import annotations

import time
from typing import Any, TypedDict

from pymongo.asynchronous.database import AsyncDatabase

WORKERS_COLLECTION = "workers"
DEFAULT_LIVENESS_SECONDS = 30.0


class LiveModel(TypedDict):
    endpoints: list[str]
    workers: int


class WorkerStore:
    """The `workers` collection: heartbeats in, live models out."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._collection = db[WORKERS_COLLECTION]

    async def beat(self, worker_id: str, fields: dict[str, Any]) -> None:
        """Upsert the worker's document with `fields` (which carry its `last_seen`)."""
        await self._collection.update_one({"_id": worker_id}, {"$set": fields}, upsert=True)

    async def remove(self, worker_id: str) -> None:
        await self._collection.delete_one({"_id": worker_id})


async def live_models(
    db: AsyncDatabase[Any], liveness_seconds: float = DEFAULT_LIVENESS_SECONDS, now: float | None = None
) -> dict[str, LiveModel]:
    """model -> {endpoints (union over its live workers, sorted), workers (how many are live)}."""
    cutoff = (time.time() if now is None else now) - liveness_seconds
    models: dict[str, tuple[set[str], int]] = {}
    cursor = db[WORKERS_COLLECTION].find({"last_seen": {"$gte": cutoff}}, {"model": 1, "endpoints": 1})
    async for worker in cursor:
        model = worker.get("model")
        if not isinstance(model, str) or not model:
            continue
        endpoints, count = models.get(model, (set(), 0))
        endpoints.update(e for e in worker.get("endpoints") or () if isinstance(e, str))
        models[model] = (endpoints, count + 1)
    return {name: {"endpoints": sorted(eps), "workers": n} for name, (eps, n) in sorted(models.items())}
