"""services/inference/engines/aimd.py: the adaptive in-flight limit, as pure bookkeeping, and its limiter."""

from __future__ import annotations

import asyncio

import pytest

from services.inference.engines.aimd import MIN_SAMPLES, AimdController, ResizableLimiter


def test_starts_at_the_ceiling_and_halves_on_a_refusal() -> None:
    c = AimdController(64)
    assert c.limit == 64
    assert c.overloaded(c.sent())
    assert c.limit == 32


def test_one_decrease_per_round_trip() -> None:
    c = AimdController(64)
    tokens = [c.sent() for _ in range(40)]  # all in flight together, then all refused
    assert sum(c.overloaded(t) for t in tokens) == 1
    assert c.limit == 32
    assert c.overloaded(c.sent())  # a request sent after the decrease may decrease again
    assert c.limit == 16


def test_never_below_the_floor_nor_above_the_ceiling() -> None:
    c = AimdController(10, floor=3)
    for _ in range(10):
        c.overloaded(c.sent())
    assert c.limit == 3
    for _ in range(1000):
        c.answered(c.sent(), 0.1)
    assert c.limit == 10
    assert AimdController(5, floor=9).limit == 5  # a floor above the ceiling is the ceiling


def test_additive_increase_is_about_one_per_round_trip() -> None:
    c = AimdController(100)
    c.overloaded(c.sent())
    c.overloaded(c.sent())
    assert c.limit == 25
    for _ in range(26):  # about one limit's worth of answers: one round trip
        c.answered(c.sent(), 0.1)
    assert c.limit == 26


def test_latency_well_above_the_baseline_decreases() -> None:
    c = AimdController(64, latency_factor=2.0)
    for _ in range(MIN_SAMPLES):
        assert not c.answered(c.sent(), 0.1)
    assert c.limit == 64
    decreased = [c.answered(c.sent(), 1.0) for _ in range(5)]
    assert any(decreased) and c.limit < 64


def test_latency_before_enough_samples_or_with_the_signal_off_changes_nothing() -> None:
    early = AimdController(64)
    early.answered(early.sent(), 0.1)
    for _ in range(MIN_SAMPLES - 2):
        assert not early.answered(early.sent(), 5.0)
    off = AimdController(64, latency_factor=0)
    for _ in range(MIN_SAMPLES):
        off.answered(off.sent(), 0.1)
    for _ in range(50):
        assert not off.answered(off.sent(), 10.0)
    assert off.limit == 64 and off.decreases == 0


def test_a_lasting_latency_change_is_absorbed_and_the_limit_recovers() -> None:
    c = AimdController(16)
    for _ in range(MIN_SAMPLES):
        c.answered(c.sent(), 0.1)
    for _ in range(20):
        c.answered(c.sent(), 1.0)
    low = c.limit
    assert low < 16
    for _ in range(2000):  # the slower server is the new normal: the baseline follows it
        c.answered(c.sent(), 1.0)
    assert c.limit == 16


async def test_limiter_shrinks_without_interrupting_and_grows_to_wake_waiters() -> None:
    lim = ResizableLimiter(3)
    for _ in range(3):
        await lim.acquire()
    lim.resize(1)
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    lim.release()
    lim.release()
    await asyncio.sleep(0)
    assert not waiter.done() and lim.in_flight == 1  # still one over the new limit of 1
    lim.release()
    await waiter
    assert lim.in_flight == 1
    more = [asyncio.ensure_future(lim.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(f.done() for f in more)
    lim.resize(4)
    await asyncio.gather(*more)
    assert lim.in_flight == 4


async def test_limiter_cancelled_waiters_leak_no_slot() -> None:
    lim = ResizableLimiter(1)
    await lim.acquire()
    waiter = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    granted = asyncio.ensure_future(lim.acquire())
    await asyncio.sleep(0)
    lim.release()  # hands the slot to `granted`...
    granted.cancel()  # ...which is cancelled before it runs: the slot must come back
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert lim.in_flight == 0
    async with lim:
        assert lim.in_flight == 1
    assert lim.in_flight == 0
