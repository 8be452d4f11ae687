"""Dispatcher + worker in one process on the real servers: the lifecycle without the HTTP layer."""

from __future__ import annotations

from pathlib import Path

from schemas.batch_lines import BatchOutputLine
from schemas.events import CloudEvent
from schemas.work import line_id
from tests.support.lines import CHAT, chat_line
from tests.support.models import write_models_file
from tests.support.stack import Stack
from tests.support.wait import wait_for


async def test_batch_completes_with_lines_in_input_order(stack: Stack, tmp_path: Path) -> None:
    models = write_models_file(tmp_path / "models.toml", None, null_model=1000)
    stack.settings = stack.settings.model_copy(update={"models_file": models})
    await stack.start_worker()
    await stack.start_dispatcher()
    lines = [chat_line(f"req-{i}") for i in range(2500)]  # 3 chunks of 1000
    file_id = await stack.upload(lines)
    batch_id = await stack.create_batch(file_id)

    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "completed", doc.get("errors")
    assert doc["request_counts"] == {"total": 2500, "completed": 2500, "failed": 0}
    assert doc["error_file_id"] is None and doc["chunks_total"] == 3
    assert doc["usage"]["output_tokens"] == 2500 * 6
    assert doc["usage"]["total_tokens"] == doc["usage"]["input_tokens"] + doc["usage"]["output_tokens"]
    out = await stack.lines_of(doc["output_file_id"])
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(2500)]
    assert out[7]["id"] == line_id(batch_id, 8)
    for o in out[:3]:
        BatchOutputLine.model_validate(o)
        assert o["response"]["status_code"] == 200
    record = await stack.files.get("p1", doc["output_file_id"])
    assert record is not None and record.purpose == "batch_output"
    assert await stack.files.get("p2", doc["output_file_id"]) is None  # another project's file
    # Parts and the chunk ledger are deleted once the files are final: after the terminal status is
    # written, so wait for it.
    async def cleaned_up() -> bool:
        return (await stack.store.list_keys(f"batches/{batch_id}/parts/") == []
                and await stack.ledger.chunks(batch_id) == [])

    await wait_for(cleaned_up, 30, what=f"the result parts and ledger of {batch_id} to be deleted")


async def test_invalid_file_fails_with_located_errors(stack: Stack) -> None:
    await stack.start_worker()
    await stack.start_dispatcher()
    file_id = await stack.upload([chat_line("a"), b"{oops", chat_line("a"), chat_line("b", model="other")])
    batch_id = await stack.create_batch(file_id)
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "failed"
    assert [(e["line"], e["code"]) for e in doc["errors"]] == [
        (2, "invalid_json"), (3, "duplicate_custom_id"), (4, "mismatched_model"),
    ]
    assert doc["failed_at"] is not None and doc["output_file_id"] is None
    assert await stack.ledger.chunks(batch_id) == []


async def test_model_without_live_worker_fails(stack: Stack) -> None:
    await stack.start_dispatcher()
    file_id = await stack.upload([chat_line("a")])
    batch_id = await stack.create_batch(file_id)
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "failed"
    assert doc["errors"][0]["code"] == "model_not_found" and doc["errors"][0]["param"] == "body.model"


async def test_bad_bodies_go_to_the_error_file_with_their_custom_id(stack: Stack) -> None:
    await stack.start_worker()
    await stack.start_dispatcher()
    bad = b'{"custom_id":"bad-1","method":"POST","url":"%s","body":{"model":"null-model"}}' % CHAT.encode()
    lines = [chat_line("ok-0"), bad, chat_line("ok-1"), b"", chat_line("ok-2", messages=[])]
    batch_id = await stack.create_batch(await stack.upload(lines))
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "completed"
    assert doc["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    errors = await stack.lines_of(doc["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"], e["error"]["line"]) for e in errors] == [
        ("bad-1", "invalid_body", 2), ("ok-2", "invalid_body", 5),
    ]
    out = await stack.lines_of(doc["output_file_id"])
    assert [o["custom_id"] for o in out] == ["ok-0", "ok-1"]


async def test_events_are_published_for_every_status(stack: Stack) -> None:
    from events.bus import Consumer
    from events.topics import batch_events_topic

    await stack.start_worker()
    await stack.start_dispatcher()
    batch_id = await stack.create_batch(await stack.upload([chat_line(f"r{i}") for i in range(10)]))
    await stack.wait_status(batch_id)
    types: list[str] = []
    async with Consumer(stack.settings, [batch_events_topic(stack.settings)], group_id="test-reader") as consumer:
        # The terminal event is published after the terminal status is written: read until it is there.
        async def completed_read() -> bool:
            for record in await consumer.getmany(timeout_ms=250):
                event = CloudEvent.model_validate_json(record.value)
                assert record.key == batch_id.encode() and event.subject == batch_id
                types.append(event.type)
            return "batch.completed" in types

        await wait_for(completed_read, 30, interval=0, what=lambda: f"batch.completed (read so far: {types})")
    assert [t for t in types if t != "batch.progress"] == [
        "batch.created", "batch.in_progress", "batch.finalizing", "batch.completed",
    ]


async def test_a_file_that_names_no_model_fails_cleanly(stack: Stack) -> None:
    await stack.start_worker()
    await stack.start_dispatcher()
    # Every line is a request-level failure (body not an object), so nothing names the batch's model.
    lines = [b'{"custom_id":"a","method":"POST","url":"%s","body":"text"}' % CHAT.encode(),
             b'{"custom_id":"b","method":"POST","url":"%s","body":[]}' % CHAT.encode()]
    batch_id = await stack.create_batch(await stack.upload(lines), model=None)
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "failed"
    assert [(e["code"], e["param"]) for e in doc["errors"]] == [("missing_model", "body.model")]


async def test_cancel_before_dispatch_ends_cancelled_without_work(stack: Stack) -> None:
    await stack.start_worker()
    batch_id = await stack.create_batch(await stack.upload([chat_line(f"r{i}") for i in range(5)]))
    cancelling = await stack.batches.transition(batch_id, "validating", "cancelling")
    await stack.publisher.publish_outbox(cancelling)
    await stack.start_dispatcher()  # sees batch.created for a cancelling batch, then batch.cancelling
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "cancelled"
    assert doc["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert doc["output_file_id"] is None and doc["error_file_id"] is None
    assert await stack.ledger.chunks(batch_id) == []


async def test_cancel_times_out_when_no_worker_drains_the_chunks(stack: Stack, tmp_path: Path) -> None:
    from services.worker.heartbeat import Heartbeat

    models = write_models_file(tmp_path / "models.toml", None, null_model=2)
    stack.settings = stack.settings.model_copy(update={"models_file": models, "cancel_timeout_seconds": 1.0})
    # The model looks served (a fresh heartbeat) but no worker consumes its topic: chunks stay pending.
    await Heartbeat(stack.db, worker_id="ghost", model="null-model", endpoints=[CHAT], interval_s=60).beat()
    await stack.start_dispatcher()
    ids = [f"r{i}" for i in range(5)]
    batch_id = await stack.create_batch(await stack.upload([chat_line(c) for c in ids]))
    await stack.wait_status(batch_id, ["in_progress"])
    await stack.publisher.publish_outbox(await stack.batches.transition(batch_id, "in_progress", "cancelling"))
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "cancelled"
    assert doc["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    errors = await stack.lines_of(doc["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"], e["error"]["line"]) for e in errors] == [
        (c, "batch_cancelled", i + 1) for i, c in enumerate(ids)
    ]
    async def ledger_gone() -> bool:
        return await stack.ledger.count(batch_id) == 0

    await wait_for(ledger_gone, 30, what=f"the ledger of {batch_id} to go")
