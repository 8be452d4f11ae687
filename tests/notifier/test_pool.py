"""The delivery pool's bounds, with plain asyncio tasks (no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from services.notifier.pool import DeliveryPool, receiving_host
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


async def test_targets_on_one_host_share_its_bound_and_other_hosts_go_on() -> None:
    pool = DeliveryPool(per_target=4, overall=10, queued_per_target=50, queued_overall=100, per_host=2)
    gate = asyncio.Event()
    running: dict[str, int] = {"slow": 0, "fast": 0}
    most = 0
    done: list[str] = []

    def held(host: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            nonlocal most
            running[host] += 1
            most = max(most, running["slow"])
            if host == "slow":
                await gate.wait()
            running[host] -= 1
            done.append(host)
        return run

    for endpoint in ("a", "b", "c"):
        for _ in range(3):
            assert pool.submit(endpoint, held("slow"), host="slow.example:443")
    for i in range(5):
        assert pool.submit(f"other{i}", held("fast"), host="fast.example:443")
    await wait_for(lambda: done.count("fast") == 5, 5, interval=0.01, what="the other host's 5 deliveries")
    assert running["slow"] == 2  # three endpoints, one host: 2 at once, not 3 x 4
    gate.set()
    await asyncio.wait_for(pool.wait_idle(), 5)
    assert done.count("slow") == 9 and most == 2 and pool.queued == 0


def test_the_receiving_host_of_a_url() -> None:
    assert receiving_host("https://Hooks.Example.com/a") == receiving_host("https://hooks.example.com:443/b")
    assert receiving_host("http://127.0.0.1:8080/x") == "127.0.0.1:8080"
    assert receiving_host("http://127.0.0.1:8080/x") != receiving_host("http://127.0.0.1:8081/x")
    assert receiving_host("http://[::1]:99999/") is None and receiving_host("not a url") is None
