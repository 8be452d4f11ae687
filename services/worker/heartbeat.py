"""Worker heartbeats: this worker's document in `workers` (services/state/workers.py), refreshed every few seconds.

`GET /v1/models` and the dispatcher's "is this model served?" check read these: a model is served
while one of its workers was seen within `worker_liveness_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.state.workers import WorkerStore

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Heartbeat:
    def __init__(
        self, db: AsyncDatabase[Any], *, worker_id: str, model: str, endpoints: Iterable[str], interval_s: float,
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.store = WorkerStore(db)
        self.worker_id = worker_id
        self.model = model
        self.endpoints = sorted(endpoints)
        self.interval_s = interval_s
        self.stats = stats
        self.started_at = time.time()
        self.last_ok: float | None = None

    async def beat(self) -> None:
        fields: dict[str, Any] = {
            "model": self.model,
            "endpoints": self.endpoints,
            "last_seen": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
        }
        if self.stats is not None:
            fields["stats"] = self.stats()
        await self.store.beat(self.worker_id, fields)
        self.last_ok = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every interval until `stop`; a failed beat is logged and retried at the next one."""
        while not stop.is_set():
            try:
                await self.beat()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def remove(self) -> None:
        """Forget this worker now (clean shutdown), so /v1/models does not list it for another 30 s."""
        try:
            await self.store.remove(self.worker_id)
        except Exception:
            log.warning("removing the heartbeat of %s failed; it will age out", self.worker_id, exc_info=True)
