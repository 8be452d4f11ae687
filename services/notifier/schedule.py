"""The scheduler: claims deliveries that are due in MongoDB and hands them to the send pool.

Due are retries whose time has come, deliveries that found no room in the pool when their event
arrived (the overflow), and deliveries whose claim lapsed because the notifier sending them died.
Claiming is what keeps several notifiers from sending the same attempt, so any number may run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.notifier.attempts import Attempts, Claims
from services.notifier.deliveries import DeliveryStore
from services.notifier.pool import DeliveryPool
from services.notifier.results import ResultWriter
from services.settings import Settings

log = logging.getLogger(__name__)


class Alarm:
    """The soonest retry this process scheduled, so the scheduler wakes for it rather than at the next poll."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()
        self._soonest = float("inf")

    def wake_at(self, at: float) -> None:
        if at < self._soonest:
            self._soonest = at
            self._rung.set()

    async def sleep(self, at_most_s: float) -> None:
        """Until the soonest retry, a wake-up, or `at_most_s` seconds, whichever comes first."""
        now = time.time()
        if self._soonest <= now:
            self._soonest = float("inf")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rung.wait(), max(0.0, min(at_most_s, self._soonest - now)))
        self._rung.clear()


@dataclass(eq=False)
class Scheduler:
    """Hands the deliveries that are due (retries, the overflow, lapsed claims) to the pool."""

    settings: Settings
    deliveries: DeliveryStore
    pool: DeliveryPool
    claims: Claims
    attempts: Attempts
    results: ResultWriter
    alarm: Alarm

    async def run(self, stop: asyncio.Event) -> None:
        """Claim what is due while the pool has room, sleep, repeat until `stop` is set."""
        while not stop.is_set():
            try:
                while self.pool.queued < self.pool.queued_overall:
                    claim = self.claims.token()
                    doc = await self.deliveries.claim_due(
                        claim, self.claims.lease_s, skip_targets=self.pool.full_targets()
                    )
                    if doc is None:
                        break
                    self.pool.submit(doc["target"], functools.partial(self._send, doc, claim), force=True,
                                     host=await self._host_of(doc))
            except Exception:
                log.exception("claiming due deliveries failed; retrying at the next poll")
            # The poll interval bounds the sleep: other notifiers schedule retries too, and claims lapse.
            await self.alarm.sleep(self.settings.webhook_poll_interval_seconds)

    async def _host_of(self, doc: Mapping[str, Any]) -> str | None:
        try:
            return await self.attempts.host_of(doc)
        except Exception:
            # Claimed already: sent under its endpoint's bound alone rather than left to lapse.
            log.warning("reading the endpoint of delivery %s failed", doc["_id"], exc_info=True)
            return None

    async def _send(self, doc: Mapping[str, Any], claim: str) -> None:
        update = await self.attempts.claimed(doc, claim)
        if update is not None:
            self.results.put(update)
