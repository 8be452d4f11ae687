"""Admission on the real servers (an in-process dispatcher and worker, a gated upstream the test
releases request by request): a small batch is not stuck behind a big one, priorities and weights
order the admissions, the window bounds what is in Kafka, and two dispatchers never admit a chunk
twice. Every assertion is on the order of admissions in the ledger, never on times."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from services.dispatcher.service import Dispatcher
from services.state.projects import ProjectStore
from tests.support.models import GATED, write_models_file
from tests.support.scheduling import admission_order, create_batch, wait_admitted, wait_queued
from tests.support.stack import Stack
from tests.support.upstream import GatedUpstream

CHUNK = 2  # gated-model's chunk_lines


async def gated_stack(stack: Stack, upstream: GatedUpstream, tmp_path: Path) -> Dispatcher:
    """One worker running one chunk at a time with one chunk of margin: a window of 2 chunks."""
    models = write_models_file(tmp_path / "models.toml", upstream.url)
    stack.settings = stack.settings.model_copy(update={
        "models_file": models, "worker_chunks_in_flight": 1, "scheduling_window_margin_chunks": 1})
    await stack.start_worker(GATED)
    return await stack.start_dispatcher()


async def finish(stack: Stack, upstream: GatedUpstream, *batch_ids: str) -> None:
    await upstream.release_all()
    for batch_id in batch_ids:
        doc = await stack.wait_status(batch_id, timeout_s=120)
        assert doc["status"] == "completed", doc.get("errors")
        out = await stack.lines_of(doc["output_file_id"])
        ids = [o["custom_id"] for o in out]
        assert len(ids) == len(set(ids)) == doc["request_counts"]["total"]


async def test_a_small_batch_starts_before_the_rest_of_a_big_one(
    stack: Stack, upstream: GatedUpstream, tmp_path: Path
) -> None:
    await gated_stack(stack, upstream, tmp_path)
    big = await create_batch(stack, 40, project="pa", model=GATED, prefix="a")
    await wait_admitted(stack, [big], 2)  # the window is full; 18 chunks of A wait in the ledger
    await wait_queued(stack, big, 20)
    marker = time.time()
    small = await create_batch(stack, 4, project="pb", model=GATED, prefix="b")
    await wait_queued(stack, small, 2)

    # Two of A's chunks finish: two places free, one at a time. Nothing more is allowed, so neither
    # batch can finish (and lose its ledger) before the order is read.
    await upstream.allow(2 * CHUNK)
    await wait_admitted(stack, [big, small], 4)
    order = await admission_order(stack, [big, small], after=marker)
    assert small in order[:2], order  # B's first chunk went out at the first or second free place, not after A
    await finish(stack, upstream, big, small)


async def test_priorities_order_admission(stack: Stack, upstream: GatedUpstream, tmp_path: Path) -> None:
    dispatcher = await gated_stack(stack, upstream, tmp_path)
    await ProjectStore(stack.db, stack.settings).set("ph", max_priority="high")
    dispatcher.projects = dispatcher.admission.projects = ProjectStore(stack.db, stack.settings)  # no stale cache
    normal = await create_batch(stack, 20, project="pa", model=GATED, prefix="n")
    await wait_admitted(stack, [normal], 2)
    marker = time.time()
    low = await create_batch(stack, 8, project="pl", model=GATED, prefix="l", metadata={"priority": "low"})
    high = await create_batch(stack, 8, project="ph", model=GATED, prefix="h", metadata={"priority": "high"})
    # Asking for high without the project's permission is normal.
    capped = await create_batch(stack, 8, project="pc", model=GATED, prefix="c", metadata={"priority": "high"})
    for b in (low, high, capped):
        await wait_queued(stack, b, 4)

    # Four chunks finish (the two of `normal` in flight, then two of `high`): every free place goes to
    # `high`, whose last two chunks stay unanswered, so its ledger is still there to read.
    await upstream.allow(4 * CHUNK)
    await wait_admitted(stack, [normal, low, high, capped], 6)
    assert await admission_order(stack, [normal, low, high, capped], after=marker) == [high] * 4
    # `high` finishes: its two places go to the normal class, shared by `normal` and the capped batch;
    # `low` waits while any normal work is queued.
    await upstream.allow(2 * CHUNK)
    await stack.wait_status(high, timeout_s=60)
    await wait_admitted(stack, [normal, low, capped], 4)
    order = await admission_order(stack, [normal, low, capped], after=marker)
    assert sorted(order) == sorted([normal, capped]), order
    await finish(stack, upstream, normal, low, capped)


async def test_weights_share_admissions(stack: Stack, upstream: GatedUpstream, tmp_path: Path) -> None:
    await ProjectStore(stack.db, stack.settings).set("heavy", weight=2)
    await gated_stack(stack, upstream, tmp_path)
    heavy = await create_batch(stack, 60, project="heavy", model=GATED, prefix="h")
    await wait_admitted(stack, [heavy], 2)
    marker = time.time()
    light = await create_batch(stack, 60, project="light", model=GATED, prefix="l")
    await wait_queued(stack, light, 30)

    await upstream.allow(12 * CHUNK)
    await wait_admitted(stack, [heavy, light], 14)
    order = Counter((await admission_order(stack, [heavy, light], after=marker))[:12])
    assert 7 <= order[heavy] <= 9 and 3 <= order[light] <= 5, order  # 2:1 is 8:4
    await finish(stack, upstream, heavy, light)


async def test_the_window_bounds_admitted_chunks(stack: Stack, tmp_path: Path) -> None:
    models = write_models_file(tmp_path / "models.toml", None, null_model=10)
    stack.settings = stack.settings.model_copy(update={"models_file": models})
    await stack.start_worker()
    dispatcher = await stack.start_dispatcher()
    window = await dispatcher.admission.window("null-model")
    assert window == 1 * (stack.settings.worker_chunks_in_flight + stack.settings.scheduling_window_margin_chunks)
    batch_id = await create_batch(stack, 1500, project="p1", model="null-model", prefix="w")  # 150 chunks
    samples: list[int] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            samples.append(len(await stack.ledger.in_flight("null-model")))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        doc = await stack.wait_status(batch_id, timeout_s=180)
    finally:
        sampling = False
        await sampler
    assert doc["status"] == "completed" and doc["request_counts"]["completed"] == 1500
    assert max(samples) <= window, Counter(samples)
    assert max(samples) >= 1 and len(samples) > 10


async def test_two_dispatchers_share_a_batch_and_admit_each_chunk_once(stack: Stack, tmp_path: Path) -> None:
    models = write_models_file(tmp_path / "models.toml", None, null_model=10)
    stack.settings = stack.settings.model_copy(update={"models_file": models})
    await stack.start_worker()
    first = await stack.start_dispatcher()
    second = await stack.start_dispatcher()
    batch_id = await create_batch(stack, 600, project="p1", model="null-model", prefix="d")  # 60 chunks
    doc = await stack.wait_status(batch_id, timeout_s=180)
    assert doc["status"] == "completed" and doc["request_counts"]["completed"] == 600
    out = await stack.lines_of(doc["output_file_id"])
    assert [o["custom_id"] for o in out] == [f"d-{i}" for i in range(600)]

    def admitted(d: Dispatcher) -> float:
        return d.admission.metrics.admitted.labels("null-model", "p1")._value.get()

    assert admitted(first) + admitted(second) == 60  # every chunk admitted exactly once between them
