"""Adaptive concurrency for a shared server: AIMD on the requests a batch keeps in flight.

A batch sent to a FastDeploy / vLLM deployment that also serves live users must not crowd them
out. The server says it is overloaded in two ways: it refuses (429, 503), or it answers slower
than it did. `AimdController` turns those signals into a limit on requests in flight — additive
increase while answers are healthy, multiplicative decrease on a refusal or a latency well above
the recent baseline — between a floor and the configured ceiling; `ResizableLimiter` enforces it.

The controller is pure bookkeeping (no clock, no event loop): the engine tells it when it sends
and what came back, which keeps it deterministic and unit-testable.

Why these rules:
- One decrease per round trip: when a server starts refusing, every request in flight is refused
  together; halving once per refusal would collapse the limit to the floor at once. Each request
  carries the epoch it was sent in, and only a refusal of a request sent after the last decrease
  decreases again (TCP's "once per window").
- Increase by 1/limit per healthy answer: about +1 per round trip whatever the limit, so growth is
  linear in time and several batches sharing one server converge to equal shares (AIMD's fairness).
- Start at the ceiling: a dedicated server is as fast as before; the controller only ever gives way.
- The latency baseline is a slow average of what this engine itself observed, so it includes the
  batch's own load: only latency that climbs beyond that (someone else's traffic, a server that
  degrades) counts, and a lasting change is absorbed into the baseline within ~1/BASELINE_ALPHA answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

DECREASE = 0.5  # the limit after a decrease, as a fraction of what it was
SHORT_ALPHA = 0.2  # weight of each answer in the recent latency
BASELINE_ALPHA = 0.02  # weight of each answer in the baseline (~50 answers of memory)
MIN_SAMPLES = 20  # answers seen before latency may decrease the limit


class AimdController:
    """The in-flight limit. `sent()` before each request, then `answered()` or `overloaded()` with its token."""

    def __init__(self, ceiling: int, *, floor: int = 1, latency_factor: float = 2.0) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        # 0 turns the latency signal off (refusals alone then decrease the limit).
        self.latency_factor = latency_factor
        self._limit = float(self.ceiling)
        self._epoch = 0
        self.decreases = 0
        self.samples = 0
        self.baseline_s: float | None = None
        self.recent_s: float | None = None

    @property
    def limit(self) -> int:
        return max(self.floor, min(self.ceiling, int(self._limit)))

    def sent(self) -> int:
        """The token of a request being sent now: the epoch it belongs to."""
        return self._epoch

    def overloaded(self, token: int) -> bool:
        """The server refused the request (429 / 503). True if the limit decreased."""
        return self._decrease(token)

    def answered(self, token: int, latency_s: float) -> bool:
        """A healthy answer after `latency_s`. True if the limit decreased (latency well above baseline)."""
        self.samples += 1
        if self.baseline_s is None or self.recent_s is None:
            self.baseline_s = self.recent_s = latency_s
        else:
            self.recent_s += SHORT_ALPHA * (latency_s - self.recent_s)
            self.baseline_s += BASELINE_ALPHA * (latency_s - self.baseline_s)
        if (self.latency_factor > 0 and self.samples >= MIN_SAMPLES
                and self.recent_s > self.latency_factor * self.baseline_s):
            if self._decrease(token):
                return True
            if token < self._epoch:
                # Sent before the last decrease: its latency says nothing about the new limit yet.
                return False
        if self._limit < self.ceiling:
            self._limit = min(float(self.ceiling), self._limit + 1.0 / max(self._limit, 1.0))
        return False

    def _decrease(self, token: int) -> bool:
        if token < self._epoch:
            return False  # this round trip already decreased the limit
        self._limit = max(float(self.floor), self._limit * DECREASE)
        self._epoch += 1
        self.decreases += 1
        return True


class ResizableLimiter:
    """A semaphore whose size can change while requests hold it; waiters are served in order.

    Shrinking never interrupts a request in flight: new ones wait until enough have finished.
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    def resize(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    async def acquire(self) -> None:
        if self.in_flight < self._limit and not self._waiters:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as it was cancelled: hand the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self._limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
