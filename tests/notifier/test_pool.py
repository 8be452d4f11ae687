"""The delivery pool's bounds, with plain asyncio tasks (no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from services.notifier.pool import DeliveryPool
from tests.support.wait import wait_for


async def test_a_stuck_target_holds_only_its_own_slots() -> None:
    pool = DeliveryPool(per_target=2, overall=3, queued_per_target=50, queued_overall=100)
    gate = asyncio.Event()
    running: dict[str, int] = {"stuck": 0, "ok": 0}
    done: list[int] = []

    async def stuck() -> None:
        running["stuck"] += 1
        await gate.wait()

    def ok(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            running["ok"] += 1
            done.append(i)
        return run

    for _ in range(6):
        assert pool.submit("stuck", stuck)
    for i in range(20):
        assert pool.submit("ok", ok(i))
    await wait_for(lambda: len(done) == 20, 5, interval=0.01, what="the healthy target's 20 deliveries")
    assert running["stuck"] == 2  # never more than its per-target share, however many wait
    assert sorted(done) == list(range(20))
    gate.set()
    await asyncio.wait_for(pool.wait_idle(), 5)
    assert running["stuck"] == 6 and pool.queued == 0


async def test_queue_bounds_refuse_work_that_must_wait_in_mongodb() -> None:
    pool = DeliveryPool(per_target=1, overall=1, queued_per_target=3, queued_overall=4)
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    assert [pool.submit("a", wait) for _ in range(4)] == [True, True, True, False]
    assert pool.room("a") == 0 and pool.full_targets() == ["a"]
    assert pool.room("b") == 1  # the overall bound: 3 of 4 taken
    assert pool.submit("b", wait)
    assert pool.room("c") == 0 and not pool.submit("c", wait)
    assert pool.submit("c", wait, force=True)  # already claimed work is never dropped
    gate.set()
    await asyncio.wait_for(pool.wait_idle(), 5)
    assert pool.room("a") == 3


async def test_a_failing_delivery_does_not_break_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    pool = DeliveryPool(per_target=1, overall=1, queued_per_target=5, queued_overall=5)
    ran: list[str] = []

    async def boom() -> None:
        raise RuntimeError("bad delivery")

    async def fine() -> None:
        ran.append("fine")

    pool.submit("t", boom)
    pool.submit("t", fine)
    await asyncio.wait_for(pool.wait_idle(), 5)
    assert ran == ["fine"] and "bad delivery" in caplog.text
