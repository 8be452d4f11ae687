"""Throttled progress: `request_counts` recomputed from the ledger and one `batch.progress` event,
at most once per interval per batch.

Results of one batch can arrive hundreds of times a second; a document write and an event for
each would load MongoDB (SecantusDB is slow under racing writers) and flood consumers. The
recompute is a `$set` of what the ledger says, never an `$inc`, so a crash or a duplicate can
never make the counts drift. The event id is `<batch>.progress.<finished chunks>`: the same
ledger state always yields the same id, so a re-sent event de-duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Recompute = Callable[[str], Awaitable[None]]


class ProgressThrottle:
    """`notify(batch_id)` after each counted result; runs `recompute(batch_id)` leading and trailing edge."""

    def __init__(self, recompute: Recompute, interval_s: float) -> None:
        self.recompute = recompute
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()

    def notify(self, batch_id: str) -> None:
        self._dirty.add(batch_id)
        if batch_id not in self._tasks:
            self._tasks[batch_id] = asyncio.create_task(self._run(batch_id), name=f"progress:{batch_id}")

    def forget(self, batch_id: str) -> None:
        """The batch is being finalized: drop its pending update (finalize writes the final counts)."""
        task = self._tasks.pop(batch_id, None)
        if task is not None:
            task.cancel()
        self._last.pop(batch_id, None)
        self._dirty.discard(batch_id)

    async def _run(self, batch_id: str) -> None:
        try:
            # Loop while results keep arriving: one that lands during a recompute gets a trailing run.
            while batch_id in self._dirty:
                delay = self._last.get(batch_id, -self.interval_s) + self.interval_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._dirty.discard(batch_id)
                self._last[batch_id] = time.monotonic()
                try:
                    await self.recompute(batch_id)
                except Exception:
                    log.warning("progress update of %s failed", batch_id, exc_info=True)
        finally:
            if self._tasks.get(batch_id) is asyncio.current_task():
                del self._tasks[batch_id]

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
