"""The chunk ledger on the real MongoDB wire server: only one result per chunk ever counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from schemas.work import WorkResult
from services.dispatcher.progress import ProgressThrottle
from services.settings import Settings
from services.state.ledger import ChunkLedger, ChunkPlan
from services.stores.mongo import close_database, open_database
from tests.support.wait import wait_for

PLANS = [ChunkPlan(0, 0, 100, 1, 3), ChunkPlan(1, 100, 180, 4, 2), ChunkPlan(2, 180, 200, 6, 1)]


@pytest_asyncio.fixture(loop_scope="session")
async def ledger(settings: Settings) -> AsyncIterator[ChunkLedger]:
    db = open_database(settings)
    ledger = ChunkLedger(db)
    await ledger.ensure_indexes()
    yield ledger
    await close_database(db)


def done(chunk: int, attempt: str, succeeded: int, failed: int = 0) -> WorkResult:
    return WorkResult(batch_id="batch_x", chunk=chunk, attempt=attempt, outcome="done",
                      output_key=f"out/{attempt}", succeeded=succeeded, failed=failed,
                      input_tokens=10 * succeeded, output_tokens=succeeded)


async def test_upsert_is_idempotent_and_keeps_progress(ledger: ChunkLedger) -> None:
    await ledger.upsert("batch_x", PLANS)
    assert await ledger.record(done(0, "a1", 3))
    await ledger.upsert("batch_x", PLANS)  # a re-run of the validation pass
    chunks = await ledger.chunks("batch_x")
    assert [(c["index"], c["status"]) for c in chunks] == [(0, "done"), (1, "pending"), (2, "pending")]
    assert await ledger.count_pending("batch_x") == 2


async def test_only_the_first_result_of_a_chunk_counts(ledger: ChunkLedger) -> None:
    await ledger.upsert("batch_x", PLANS)
    # Two attempts of chunk 1 racing (a redelivery while the first was still running).
    wins = await asyncio.gather(ledger.record(done(1, "first", 2)), ledger.record(done(1, "second", 1, 1)))
    assert sorted(wins) == [False, True]
    winner = "first" if wins[0] else "second"
    assert (await ledger.get("batch_x", 1))["attempt"] == winner
    assert not await ledger.record(done(1, "third", 2))


async def test_abandoned_chunks_refuse_late_results_and_count_as_unfinished(ledger: ChunkLedger) -> None:
    await ledger.upsert("batch_x", PLANS)
    assert await ledger.record(done(0, "a", 2, 1))
    skipped = WorkResult(batch_id="batch_x", chunk=1, attempt="s", outcome="skipped")
    assert await ledger.record(skipped)
    assert await ledger.abandon_pending("batch_x") == 1
    assert not await ledger.record(done(2, "late", 1))
    s = await ledger.summary("batch_x")
    assert (s.chunks, s.pending, s.finished, s.total_lines) == (3, 0, 3, 6)
    assert (s.succeeded, s.failed, s.unfinished_lines) == (2, 1, 3)
    assert (s.input_tokens, s.output_tokens) == (20, 2)


async def test_progress_throttle_coalesces_and_runs_a_trailing_update() -> None:
    runs: list[int] = []
    state = {"n": 0}

    async def recompute(batch_id: str) -> None:
        runs.append(state["n"])
        await asyncio.sleep(0.01)

    throttle = ProgressThrottle(recompute, interval_s=0.2)
    for i in range(1, 51):  # a burst of results
        state["n"] = i
        throttle.notify("b")
        await asyncio.sleep(0.002)
    await wait_for(lambda: runs[-1] == 50, 5, interval=0.01, what=lambda: f"the trailing update (runs: {runs})")
    await throttle.close()
    # Leading edge saw an early state; the last run saw the final one; far fewer runs than notifies.
    assert runs[-1] == 50 and 1 <= len(runs) <= 5


async def test_a_settled_chunk_reports_its_time_since_publication(ledger: ChunkLedger) -> None:
    await ledger.upsert("batch_t", PLANS)
    settled = await ledger.settle(done(0, "a", 3).model_copy(update={"batch_id": "batch_t"}))
    assert settled is not None and settled.seconds is not None and settled.seconds >= 0
    assert await ledger.settle(done(0, "b", 3).model_copy(update={"batch_id": "batch_t"})) is None
    assert len(await ledger.chunk_seconds("batch_t")) == 1


async def test_stale_pending_chunks_are_found_and_restamped(ledger: ChunkLedger) -> None:
    import time

    await ledger.upsert("batch_s", PLANS)
    assert await ledger.record(done(1, "a", 2).model_copy(update={"batch_id": "batch_s"}))
    later = time.time() + 10
    assert [c["index"] for c in await ledger.pending_published_before("batch_s", later)] == [0, 2]
    assert await ledger.pending_published_before("batch_s", time.time() - 10) == []
    await ledger.mark_published("batch_s", [2])
    stamped = (await ledger.get("batch_s", 2))["published_at"]
    assert stamped >= (await ledger.get("batch_s", 0))["published_at"]


async def test_a_deleted_ledger_counts_no_late_result(ledger: ChunkLedger) -> None:
    await ledger.upsert("batch_d", PLANS)
    assert await ledger.delete_batch("batch_d") == 3
    assert not await ledger.record(done(0, "late", 3).model_copy(update={"batch_id": "batch_d"}))
    assert await ledger.count("batch_d") == 0 and await ledger.count_pending("batch_d") == 0
