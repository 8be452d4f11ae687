"""Bounded concurrency for deliveries: per target and overall, so a slow receiver holds up only itself.

Each submitted delivery becomes a task that first takes a slot of its target (an endpoint, or a
callback host) and only then one of the overall slots. A receiver that never answers therefore
occupies at most `per_target` overall slots while its other deliveries wait on its own semaphore,
and every other target keeps sending. Memory is bounded too: a target accepts at most
`queued_per_target` deliveries (waiting + running) and the pool `queued_overall`; beyond that a
delivery stays in MongoDB, where the scheduler finds it once there is room.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class DeliveryPool:
    def __init__(self, *, per_target: int, overall: int, queued_per_target: int, queued_overall: int) -> None:
        if min(per_target, overall, queued_per_target, queued_overall) < 1:
            raise ValueError("concurrency limits must be at least 1")
        self.per_target = per_target
        self.queued_per_target = max(queued_per_target, per_target)
        self.queued_overall = max(queued_overall, overall)
        self._total = 0
        self._overall = asyncio.Semaphore(overall)
        self._target_slots: dict[str, asyncio.Semaphore] = {}
        self._queued: defaultdict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def room(self, target: str) -> int:
        """How many more deliveries `target` accepts now (its own bound and the pool's)."""
        return min(self.queued_per_target - self._queued.get(target, 0), self.queued_overall - self._total)

    def full_targets(self) -> list[str]:
        return [t for t, n in self._queued.items() if n >= self.queued_per_target]

    @property
    def queued(self) -> int:
        return self._total

    def submit(self, target: str, run: Callable[[], Awaitable[None]], *, force: bool = False) -> bool:
        """Start `run()` once `target` and the pool have a free slot; False (nothing started) when full.

        force: accept even beyond the queue bound — for work already claimed on the strength of an
        earlier `room()` answer, which must not sit claimed and unsent until its lease lapses.
        """
        if self.room(target) <= 0 and not force:
            return False
        self._queued[target] += 1
        self._total += 1
        self._idle.clear()
        task = asyncio.create_task(self._run(target, run), name=f"deliver:{target}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, target: str, run: Callable[[], Awaitable[None]]) -> None:
        slots = self._target_slots.get(target)
        if slots is None:
            slots = self._target_slots[target] = asyncio.Semaphore(self.per_target)
        try:
            async with slots, self._overall:
                await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The delivery's claim lapses and the scheduler retries it; one bad delivery must not
            # take the pool down.
            log.exception("delivery to %s failed unexpectedly", target)
        finally:
            self._total -= 1
            self._queued[target] -= 1
            if self._queued[target] <= 0:
                del self._queued[target]
                self._target_slots.pop(target, None)
            if not self._queued:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        """Cancel everything in flight: those deliveries' claims lapse and another run sends them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
