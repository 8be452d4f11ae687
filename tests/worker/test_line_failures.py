"""A line's failure is that line's outcome; only an unavailable engine retries a chunk, a bounded
number of times, never re-sending a line already answered; a slow chunk holds back nobody else.

Everything runs on the real servers: an in-process dispatcher and worker (tests/support/stack.py)
on the session's Kafka/MongoDB/S3, and `MarkedUpstream`, a loopback OpenAI-compatible server, as
the worker's `upstream` engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiokafka import TopicPartition

from services.inference.engines.managed_server import free_port
from services.settings import Settings
from services.worker.service import Worker, backlog_limit, pacing
from tests.support.lines import chat_line
from tests.support.marked_upstream import MARKED, POISON_BODY, MarkedUpstream, write_models_file
from tests.support.stack import Stack, open_stack
from tests.support.wait import wait_for


@pytest_asyncio.fixture(loop_scope="session")
async def marked() -> AsyncIterator[MarkedUpstream]:
    server = await MarkedUpstream().start()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def running(settings: Settings, tmp_path: Path, url: str, *, chunk_lines: int, max_concurrency: int = 4,
                  **overrides: Any) -> AsyncIterator[tuple[Stack, Worker]]:
    models = write_models_file(tmp_path / "models.toml", url, chunk_lines=chunk_lines,
                               max_concurrency=max_concurrency)
    async with open_stack(settings.model_copy(update={"models_file": models, **overrides})) as st:
        await st.start_dispatcher()
        worker = await st.start_worker(MARKED)
        yield st, worker


async def submit(st: Stack, custom_ids: list[str]) -> str:
    file_id = await st.upload([chat_line(c, model=MARKED) for c in custom_ids])
    return await st.create_batch(file_id, model=MARKED)


async def results(st: Stack, doc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return await st.lines_of(doc.get("output_file_id")), await st.lines_of(doc.get("error_file_id"))


def counter(worker: Worker, name: str, *labels: str) -> float:
    metric = getattr(worker.metrics, name)
    return float((metric.labels(*labels) if labels else metric)._value.get())


async def test_a_line_the_engine_always_refuses_fails_alone_and_the_batch_completes(
    settings: Settings, tmp_path: Path, marked: MarkedUpstream
) -> None:
    ids = [f"a{i}" for i in range(30)]
    ids[13] = "a13-fail-503"
    others = [f"b{i}" for i in range(20)]
    async with running(settings, tmp_path, marked.url, chunk_lines=10) as (st, worker):
        poisoned = await submit(st, ids)
        second = await submit(st, others)
        doc = await st.wait_status(poisoned)
        doc2 = await st.wait_status(second)
        assert (doc["status"], doc2["status"]) == ("completed", "completed")
        assert doc["request_counts"] == {"total": 30, "completed": 29, "failed": 1}
        assert doc2["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
        out, err = await results(st, doc)
        assert [x["custom_id"] for x in out] == [c for c in ids if c != "a13-fail-503"]
        [line] = err
        assert line["custom_id"] == "a13-fail-503"
        assert line["response"]["status_code"] == 503 and line["response"]["body"] == POISON_BODY
        assert line["error"]["code"] == "poisoned" and line["error"]["line"] == 14
        # Retried by the engine (max_retries = 1), never by re-running its chunk.
        assert marked.received["a13-fail-503"] == 2
        assert all(marked.answered[c] == 1 for c in ids + others if c != "a13-fail-503")
        assert counter(worker, "line_failures", "poisoned") == 1
        assert counter(worker, "chunk_retries", "engine_unavailable") == 0


async def test_an_engine_down_through_every_try_gives_its_lines_engine_unavailable(
    settings: Settings, tmp_path: Path
) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"
    async with running(settings, tmp_path, nothing_there, chunk_lines=4, worker_chunk_max_attempts=2) as (st, worker):
        batch = await submit(st, [f"r{i}" for i in range(10)])
        doc = await st.wait_status(batch)
        assert doc["status"] == "completed"
        assert doc["request_counts"] == {"total": 10, "completed": 0, "failed": 10}
        out, err = await results(st, doc)
        assert out == []
        assert [x["custom_id"] for x in err] == [f"r{i}" for i in range(10)]
        assert {x["error"]["code"] for x in err} == {"engine_unavailable"}
        assert all(x["response"] is None and x["error"]["line"] == n for n, x in enumerate(err, 1))
        assert counter(worker, "chunk_give_ups") == 3
        assert counter(worker, "chunk_retries", "engine_unavailable") == 3  # one retry per chunk, then given up
        assert counter(worker, "line_failures", "engine_unavailable") == 10


async def test_lines_answered_before_the_engine_went_down_are_kept_when_the_chunk_gives_up(
    settings: Settings, tmp_path: Path, marked: MarkedUpstream
) -> None:
    ids = ["r1", "r2", "r3-hold", "r4", "r5"]
    # One request at a time, so r1 and r2 are answered before r3 is held and the server goes down.
    async with running(settings, tmp_path, marked.url, chunk_lines=5, max_concurrency=1,
                       worker_chunk_max_attempts=3) as (st, worker):
        batch = await submit(st, ids)
        await marked.wait_received("r3-hold")
        marked.down = True
        marked.release()
        doc = await st.wait_status(batch)
        out, err = await results(st, doc)
        assert doc["status"] == "completed"
        assert [x["custom_id"] for x in out] == ["r1", "r2"]
        assert [(x["custom_id"], x["error"]["code"]) for x in err] == [
            ("r3-hold", "engine_unavailable"), ("r4", "engine_unavailable"), ("r5", "engine_unavailable")]
        assert (marked.received["r1"], marked.received["r2"]) == (1, 1)  # never sent again by a retry
        assert counter(worker, "chunk_give_ups") == 1


async def test_when_the_engine_comes_back_only_unanswered_lines_are_sent_again(
    settings: Settings, tmp_path: Path, marked: MarkedUpstream
) -> None:
    ids = ["r1", "r2", "r3", "r4-hold", "r5", "r6"]
    async with running(settings, tmp_path, marked.url, chunk_lines=6, max_concurrency=1,
                       worker_chunk_max_attempts=10) as (st, worker):
        batch = await submit(st, ids)
        await marked.wait_received("r4-hold")
        marked.down = True
        marked.release()
        # Down for two tries of the chunk, then back.
        await wait_for(lambda: counter(worker, "chunk_retries", "engine_unavailable") >= 2,
                       what="two failed tries of the chunk")
        marked.down = False
        doc = await st.wait_status(batch)
        assert doc["status"] == "completed"
        assert doc["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
        out, _ = await results(st, doc)
        assert [x["custom_id"] for x in out] == ids
        assert all(marked.answered[c] == 1 for c in ids)  # no line answered twice
        assert [marked.received[c] for c in ["r1", "r2", "r3"]] == [1, 1, 1]
        assert marked.received["r4-hold"] >= 3  # dropped while down, answered once back
        assert counter(worker, "chunk_give_ups") == 0


async def test_a_slow_chunk_does_not_stop_the_worker_running_other_chunks(
    settings: Settings, tmp_path: Path, marked: MarkedUpstream
) -> None:
    # Eight one-line chunks behind one held chunk: more than a worker used to fetch past an
    # unfinished chunk before it stopped fetching altogether.
    async with running(settings, tmp_path, marked.url, chunk_lines=1) as (st, _):
        slow = await submit(st, ["s1-hold"])
        await marked.wait_received("s1-hold")
        fast = await submit(st, [f"f{i}" for i in range(8)])
        doc = await st.wait_status(fast)
        assert doc["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
        assert (await st.batches.get(slow))["status"] == "in_progress"
        marked.release()
        assert (await st.wait_status(slow))["status"] == "completed"


async def test_a_partition_backed_up_behind_a_slow_chunk_is_paused_and_resumed(
    settings: Settings, tmp_path: Path, marked: MarkedUpstream
) -> None:
    async with running(settings, tmp_path, marked.url, chunk_lines=1, work_topic_partitions=1) as (st, worker):
        slow = await submit(st, ["s1-hold"])
        await marked.wait_received("s1-hold")
        fast = await submit(st, [f"f{i}" for i in range(12)])
        consumer = worker._consumer
        assert consumer is not None
        await wait_for(lambda: consumer.paused(), what="the partition to be paused")
        assert worker.metrics.partitions_paused._value.get() == 1
        # Paused with a full backlog: the held chunk and the ones fetched behind it, which still run.
        behind = backlog_limit(2) - 1
        await wait_for(lambda: sum(marked.answered[f"f{i}"] for i in range(12)) == behind,
                       what=f"the {behind} chunks fetched behind the held one to be answered")
        assert consumer.paused() and (await st.batches.get(fast))["status"] == "in_progress"
        assert sum(marked.received[f"f{i}"] for i in range(12)) == behind  # nothing fetched past the backlog
        marked.release()
        doc = await st.wait_status(fast)
        assert doc["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
        assert (await st.wait_status(slow))["status"] == "completed"
        await wait_for(lambda: not consumer.paused(), what="the partition to be resumed")


def tp(n: int) -> TopicPartition:
    return TopicPartition("work", n)


def test_pacing_pauses_full_partitions_and_resumes_drained_ones() -> None:
    assigned = {tp(0), tp(1), tp(2)}
    # Full and not yet paused -> pause; paused and drained (or revoked, so no backlog) -> resume.
    assert pacing({tp(0): 8, tp(1): 3}, assigned, set(), 8) == ({tp(0)}, set())
    assert pacing({tp(0): 9, tp(1): 3}, assigned, {tp(0)}, 8) == (set(), set())
    assert pacing({tp(0): 7}, assigned, {tp(0)}, 8) == (set(), {tp(0)})
    assert pacing({}, assigned, {tp(2)}, 8) == (set(), {tp(2)})
    # A partition no longer assigned is never paused, whatever is still in hand from it.
    assert pacing({tp(5): 20}, assigned, set(), 8) == (set(), set())


def test_backlog_limit_grows_with_the_window() -> None:
    assert backlog_limit(1) == backlog_limit(2) == 8
    assert backlog_limit(4) == 16
