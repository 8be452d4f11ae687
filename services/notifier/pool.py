"""Bounded concurrency for deliveries: per target, per receiving host and overall, so a slow receiver
holds up only itself.

Each submitted delivery becomes a task that first takes a slot of its target (an endpoint, or a
callback host), then one of its receiving host (the URL's host and port), and only then one of the
overall slots. A receiver that never answers therefore occupies at most `per_target` overall slots
per endpoint and `per_host` across every endpoint, of every project, that points at it, while its
other deliveries wait on its own semaphores, and every other host keeps sending. Memory is bounded
too: a target accepts at most `queued_per_target` deliveries (waiting + running) and the pool
`queued_overall`; beyond that a delivery stays in MongoDB, where the scheduler finds it once there
is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def receiving_host(url: str) -> str | None:
    """The host a URL delivers to, as `host:port` (the scheme's port when none is given); None when the
    URL names none (its attempt fails on its own)."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    host = (parts.hostname or "").lower().rstrip(".")
    return f"{host}:{port}" if host else None


class _Slots:
    """Semaphores by key, each dropped when nobody holds or waits for it, so keys never pile up."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: defaultdict[str, int] = defaultdict(int)

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.size)
        self._users[key] += 1
        try:
            async with slots:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] <= 0:
                del self._users[key]
                self._slots.pop(key, None)


class DeliveryPool:
    def __init__(
        self, *, per_target: int, overall: int, queued_per_target: int, queued_overall: int,
        per_host: int | None = None,
    ) -> None:
        per_host = overall if per_host is None else per_host
        if min(per_target, overall, queued_per_target, queued_overall, per_host) < 1:
            raise ValueError("concurrency limits must be at least 1")
        self.per_target = per_target
        self.per_host = per_host
        self.queued_per_target = max(queued_per_target, per_target)
        self.queued_overall = max(queued_overall, overall)
        self._total = 0
        self._overall = asyncio.Semaphore(overall)
        self._target_slots = _Slots(per_target)
        self._host_slots = _Slots(per_host)
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

    def submit(
        self, target: str, run: Callable[[], Awaitable[None]], *, host: str | None = None, force: bool = False
    ) -> bool:
        """Start `run()` once `target`, its receiving `host` and the pool have a free slot; False (nothing
        started) when full.

        host: `receiving_host` of the URL it goes to; None (unknown) bounds it by its target only.
        force: accept even beyond the queue bound — for work already claimed on the strength of an
        earlier `room()` answer, which must not sit claimed and unsent until its lease lapses.
        """
        if self.room(target) <= 0 and not force:
            return False
        self._queued[target] += 1
        self._total += 1
        self._idle.clear()
        task = asyncio.create_task(self._run(target, host, run), name=f"deliver:{target}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, target: str, host: str | None, run: Callable[[], Awaitable[None]]) -> None:
        try:
            # Narrowest first: a delivery waiting for its host holds no overall slot.
            async with self._target_slots.slot(target), self._host_slot(host), self._overall:
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
            if not self._queued:
                self._idle.set()

    def _host_slot(self, host: str | None) -> contextlib.AbstractAsyncContextManager[None]:
        return self._host_slots.slot(host) if host is not None else contextlib.nullcontext()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        """Cancel everything in flight: those deliveries' claims lapse and another run sends them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
