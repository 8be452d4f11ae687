"""Attempt results written to MongoDB in bulk, each only under the claim that made it.

Results of attempts that ended after their delivery was inserted (a slow first attempt, every
retry) queue here and are written up to _RESULT_BATCH per round trip. The queue's length is the
consumer's backpressure: results must reach MongoDB well inside a claim's lease, or the scheduler
would take the delivery for a crashed notifier's and send it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from pymongo import UpdateOne

from services.notifier.deliveries import DeliveryStore
from services.runtime.retry import retry_until_stopped

log = logging.getLogger(__name__)

_RESULT_BATCH = 500


class ResultWriter:
    def __init__(self, deliveries: DeliveryStore) -> None:
        self.deliveries = deliveries
        self._queue: asyncio.Queue[UpdateOne] = asyncio.Queue()

    def put(self, update: UpdateOne) -> None:
        self._queue.put_nowait(update)

    @property
    def backlog(self) -> int:
        """Results waiting to be written."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Write results as they come, until cancelled."""
        while True:
            ops = [await self._queue.get()]
            while len(ops) < _RESULT_BATCH and not self._queue.empty():
                ops.append(self._queue.get_nowait())
            try:
                # Until it succeeds (MongoDB briefly unavailable): giving up would lose a result, and
                # the consumer pauses meanwhile.
                held = await retry_until_stopped(
                    functools.partial(self.deliveries.write_results, ops),
                    what=f"recording {len(ops)} attempt results", first_delay=0.2, max_delay=30.0,
                )
                if held < len(ops):
                    log.info("%d attempt results arrived after their claim lapsed", len(ops) - held)
            finally:
                for _ in ops:
                    self._queue.task_done()

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until every queued result is written; `run` must be running."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
