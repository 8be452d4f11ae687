"""The worker's pieces on the real servers: chunk framing, lazy result parts, skip rules, heartbeats."""

from __future__ import annotations

import orjson

from schemas.line_validation import LineIssue, ValidLine
from schemas.work import WorkChunk, line_id
from services.inference.registry import get_model
from services.state.chunk_objects import PartWriter
from services.state.ledger import ChunkPlan
from services.state.workers import live_models
from services.worker.chunk_io import read_chunk_items
from services.worker.heartbeat import Heartbeat
from services.worker.service import Worker
from tests.support.lines import CHAT, chat_line
from tests.support.stack import Stack

BOM = b"\xef\xbb\xbf"


def work(batch_id: str, key: str, plan: ChunkPlan, model: str = "null-model") -> WorkChunk:
    return WorkChunk(batch_id=batch_id, project="p1", chunk=plan.index, start=plan.start, end=plan.end,
                     first_line=plan.first_line, line_count=plan.line_count, input_key=key, endpoint=CHAT,
                     model=model)


async def test_chunk_lines_keep_their_file_line_numbers(stack: Stack) -> None:
    bad = b'{"custom_id":"bad","method":"POST","url":"/v1/chat/completions","body":{"model":"null-model"}}'
    first = BOM + chat_line("a") + b"\r\n"
    rest = b"\n".join([chat_line("b"), b"", bad, chat_line("c")]) + b"\n"
    await stack.store.put_bytes("in.jsonl", first + rest)
    # A chunk starting at line 2 (byte len(first)), as the dispatcher cut it.
    items = await read_chunk_items(stack.store, work("batch_x", "in.jsonl", ChunkPlan(1, len(first),
                                                                          len(first + rest), 2, 3)), 1 << 20)
    assert [(type(i).__name__, i.number, i.custom_id) for i in items] == [
        ("ValidLine", 2, "b"), ("LineIssue", 4, "bad"), ("ValidLine", 5, "c"),
    ]
    assert isinstance(items[1], LineIssue) and items[1].code == "invalid_body"
    # And the first line: the BOM and the CR are framing, not content.
    [item] = await read_chunk_items(stack.store, work("batch_x", "in.jsonl", ChunkPlan(0, 0, len(first), 1, 1)),
                                    1 << 20)
    assert isinstance(item, ValidLine) and item.custom_id == "a"


async def test_part_writer_creates_nothing_when_nothing_is_written(stack: Stack) -> None:
    async with PartWriter(stack.store, "parts/empty") as empty, PartWriter(stack.store, "parts/full") as full:
        await empty.write(b"")
        await full.write(b"x\n")
    assert empty.key is None and full.key == "parts/full"
    assert await stack.store.head("parts/empty") is None
    assert await stack.store.get_bytes("parts/full") == b"x\n"


async def _worker(stack: Stack) -> Worker:
    engine = get_model("null-model").create_engine()
    await engine.start()
    return Worker(stack.settings, engine, db=stack.db, store=stack.store, producer=stack.producer, worker_id="w1")


async def test_process_runs_pending_chunks_and_skips_the_rest(stack: Stack) -> None:
    file_id = await stack.upload([chat_line(f"r{i}") for i in range(4)])
    batch_id = await stack.create_batch(file_id)
    doc = await stack.batches.get(batch_id)
    key = doc["input"]["key"]
    size = await stack.store.head(key)
    assert size is not None
    plan = ChunkPlan(0, 0, size, 1, 4)
    await stack.ledger.upsert(batch_id, [plan])
    worker = await _worker(stack)

    first = await worker.process(work(batch_id, key, plan))
    second = await worker.process(work(batch_id, key, plan))  # a redelivery while still pending
    assert first is not None and second is not None and first.outcome == second.outcome == "done"
    assert first.attempt != second.attempt and first.output_key != second.output_key
    assert (first.succeeded, first.failed, first.error_key) == (4, 0, None)
    lines = [orjson.loads(x) for x in (await stack.store.get_bytes(first.output_key)).splitlines()]
    again = [orjson.loads(x) for x in (await stack.store.get_bytes(second.output_key)).splitlines()]
    # Line ids derive from the batch id and line number: every attempt names a line the same way.
    assert [x["id"] for x in lines] == [x["id"] for x in again] == [line_id(batch_id, n) for n in range(1, 5)]

    assert await stack.ledger.record(first)
    assert await worker.process(work(batch_id, key, plan)) is None  # already counted: nothing to report

    await stack.ledger.upsert(batch_id, [ChunkPlan(1, 0, size, 1, 4)])
    await stack.batches.transition(batch_id, "validating", "cancelling")
    skipped = await worker.process(work(batch_id, key, ChunkPlan(1, 0, size, 1, 4)))
    assert skipped is not None and skipped.outcome == "skipped" and skipped.output_key is None
    await worker.engine.close()


async def test_heartbeat_makes_the_model_live_and_removal_forgets_it(stack: Stack) -> None:
    hb = Heartbeat(stack.db, worker_id="w-hb", model="null-model", endpoints=[CHAT], interval_s=5,
                   stats=lambda: {"partitions": [0, 1]})
    await hb.beat()
    live = await live_models(stack.db)
    assert live["null-model"] == {"endpoints": [CHAT], "workers": 1}
    doc = await stack.db["workers"].find_one({"_id": "w-hb"})
    assert doc["stats"] == {"partitions": [0, 1]} and doc["pid"] > 0
    await hb.remove()
    assert "null-model" not in await live_models(stack.db)


async def test_the_engines_concurrency_limit_is_a_gauge(stack: Stack) -> None:
    """Operators see an upstream engine backing off (its adaptive limit) on the worker's /metrics."""
    from prometheus_client import CollectorRegistry, generate_latest

    from services.inference.engines.upstream import UpstreamEngine

    engine = UpstreamEngine("shared-model", base_url="http://127.0.0.1:9/v1", max_concurrency=12)
    registry = CollectorRegistry()
    Worker(stack.settings, engine, db=stack.db, store=stack.store, producer=stack.producer, worker_id="w-gauge",
           registry=registry)
    assert b"offhours_worker_engine_concurrency_limit 12.0" in generate_latest(registry)
    engine._limiter.resize(3)  # what a run of 429s does to it
    assert b"offhours_worker_engine_concurrency_limit 3.0" in generate_latest(registry)
