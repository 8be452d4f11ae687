"""One batch cannot hurt another: guarded, bounded input URLs; concurrent validation with a deadline;
lost work driven again; completion before expiry; clean-up after finalize. Real servers throughout."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from schemas.work import url_input_key
from services.state.batches import CLEANUP_FIELD, new_batch_document
from services.worker.heartbeat import Heartbeat
from tests.support.inputs import InputServer, create_url_batch
from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.models import write_models_file
from tests.support.stack import Stack
from tests.support.wait import wait_for


@pytest_asyncio.fixture(loop_scope="session")
async def inputs() -> AsyncIterator[InputServer]:
    server = await InputServer(jsonl(chat_line(f"u{i}") for i in range(6))).start()
    yield server
    await server.stop()


def configure(stack: Stack, tmp_path: Path, **overrides: Any) -> None:
    models = write_models_file(tmp_path / "models.toml", None, null_model=2)
    stack.settings = stack.settings.model_copy(update={"models_file": models, **overrides})


async def ghost_worker(stack: Stack) -> None:
    """The model looks served (a fresh heartbeat) but nothing consumes its work topic."""
    await Heartbeat(stack.db, worker_id="ghost", model="null-model", endpoints=[CHAT], interval_s=60).beat()


def error_of(doc: dict[str, Any]) -> dict[str, Any]:
    assert doc["errors"], doc
    return dict(doc["errors"][0])


async def test_a_slow_drip_input_delays_no_other_project(stack: Stack, inputs: InputServer, tmp_path: Path) -> None:
    configure(stack, tmp_path, input_url_timeout_seconds=15.0)
    await stack.start_worker()
    await stack.start_dispatcher()
    drip = await create_url_batch(stack, f"{inputs.base}/drip", project="slow")
    await wait_for(lambda: inputs.dripping == 1, 30, what="the dispatcher to fetch the dripping input")

    other = await stack.create_batch(await stack.upload([chat_line(f"r{i}") for i in range(5)], project="p2"),
                                     project="p2")
    doc = await stack.wait_status(other)
    assert doc["status"] == "completed", doc.get("errors")
    # Validated and completed while the drip was still being read: not queued behind it.
    assert inputs.dripping == 1
    assert (await stack.batches.get(drip))["status"] == "validating"

    doc = await stack.wait_status(drip)
    assert doc["status"] == "failed"
    error = error_of(doc)
    assert error["code"] == "input_unavailable" and "within 15s" in error["message"], error
    assert "127.0.0.1" not in error["message"] and str(inputs.port) not in error["message"]
    assert await stack.store.head(url_input_key(drip)) is None  # no partial copy kept


async def test_loopback_input_urls_are_refused_at_fetch(stack: Stack, inputs: InputServer, tmp_path: Path) -> None:
    configure(stack, tmp_path, input_url_allow_private=False, input_url_allowlist=[])
    await ghost_worker(stack)
    await stack.start_dispatcher()
    literal = await create_url_batch(stack, f"{inputs.base}/input.jsonl")
    named = await create_url_batch(stack, f"http://localhost:{inputs.port}/input.jsonl")
    for batch_id in (literal, named):
        doc = await stack.wait_status(batch_id)
        assert doc["status"] == "failed"
        error = error_of(doc)
        assert error["code"] == "url_not_allowed" and "loopback" in error["message"], error
        assert "127.0.0.1" not in error["message"] and "localhost" not in error["message"]
    assert inputs.gets == 0  # refused before connecting, for a literal and for a name alike


async def test_a_redirect_to_a_refused_address_is_refused(stack: Stack, inputs: InputServer, tmp_path: Path) -> None:
    # The first hop is allowed (allowlisted), the redirect target is not: every hop is checked.
    configure(stack, tmp_path, input_url_allow_private=False, input_url_allowlist=["127.0.0.1/32"])
    await ghost_worker(stack)
    await stack.start_dispatcher()
    ok = await create_url_batch(stack, f"{inputs.base}/redirect?to={inputs.base}/input.jsonl")
    bad = await create_url_batch(stack, f"{inputs.base}/redirect?to=http://10.1.2.3:{inputs.port}/input.jsonl")
    doc = await stack.wait_status(ok, ["in_progress"])
    assert doc["request_counts"]["total"] == 6
    doc = await stack.wait_status(bad)
    assert doc["status"] == "failed"
    error = error_of(doc)
    assert error["code"] == "url_not_allowed" and "private" in error["message"], error
    assert "10.1.2.3" not in error["message"]


async def test_a_validating_batch_past_its_deadline_fails(stack: Stack, tmp_path: Path) -> None:
    configure(stack, tmp_path, validating_timeout_seconds=60.0)
    await ghost_worker(stack)
    file_id = await stack.upload([chat_line("a")])
    record = await stack.files.get("p1", file_id)
    assert record is not None
    # Created long ago and its batch.created long gone (no outbox left): only the sweep can see it.
    doc = new_batch_document(project="p1", endpoint=CHAT, input_file_id=file_id,
                             input={"kind": "file", "key": record.key, "bytes": record.bytes},
                             completion_window="24h", expires_in_s=86400.0, model="null-model",
                             now=time.time() - 120)
    doc["outbox"] = []
    del doc["outbox_at"]
    await stack.batches.insert(doc)
    await stack.start_dispatcher()
    done = await stack.wait_status(doc["_id"])
    assert done["status"] == "failed"
    assert error_of(done)["code"] == "validation_timeout"


async def test_a_finished_batch_past_expiry_completes(stack: Stack, tmp_path: Path) -> None:
    configure(stack, tmp_path)
    await ghost_worker(stack)
    first = await stack.start_dispatcher()
    ids = [f"r{i}" for i in range(6)]
    batch_id = await stack.create_batch(await stack.upload([chat_line(c) for c in ids]))
    await stack.wait_status(batch_id, ["in_progress"])
    stack.stops[-1].set()  # the dispatcher stops; what it would count is settled by hand below
    await stack.tasks[-1]
    assert first is stack.dispatcher
    for chunk in await stack.ledger.chunks(batch_id):
        assert await stack.ledger.record(_skipped(batch_id, chunk["index"]))
    await stack.batches.update_fields(batch_id, {"expires_at": time.time() - 1})
    await stack.start_dispatcher()
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "completed"


def _skipped(batch_id: str, chunk: int) -> Any:
    from schemas.work import WorkResult

    return WorkResult(batch_id=batch_id, chunk=chunk, attempt="by-hand", outcome="skipped")


async def test_a_deleted_work_topic_is_published_again(stack: Stack, tmp_path: Path) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from events.topics import work_topic

    configure(stack, tmp_path, chunk_republish_min_seconds=2.0)
    await ghost_worker(stack)
    dispatcher = await stack.start_dispatcher()
    ids = [f"r{i}" for i in range(6)]
    batch_id = await stack.create_batch(await stack.upload([chat_line(c) for c in ids]))
    await stack.wait_status(batch_id, ["in_progress"])
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([work_topic(stack.settings, "null-model")])
    finally:
        await admin.close()
    await stack.start_worker()
    doc = await stack.wait_status(batch_id, timeout_s=90)
    assert doc["status"] == "completed"
    assert doc["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert dispatcher.metrics.chunks_republished.labels("lost")._value.get() >= 1


async def test_finalize_removes_the_ledger_the_url_copy_and_the_parts(
    stack: Stack, inputs: InputServer, tmp_path: Path
) -> None:
    configure(stack, tmp_path)
    await stack.start_worker()
    await stack.start_dispatcher()
    batch_id = await create_url_batch(stack, f"{inputs.base}/input.jsonl")
    doc = await stack.wait_status(batch_id)
    assert doc["status"] == "completed" and doc["request_counts"]["completed"] == 6

    async def cleaned() -> bool:
        return (await stack.ledger.count(batch_id) == 0
                and await stack.store.head(url_input_key(batch_id)) is None
                and await stack.store.list_keys(f"batches/{batch_id}/") == []
                and CLEANUP_FIELD not in (await stack.batches.get(batch_id) or {}))

    await wait_for(cleaned, 30, what=f"the ledger, URL copy and parts of {batch_id} to go")
    assert inputs.gets == 1


async def test_the_sweep_releases_a_pin_left_by_a_dead_finalize(stack: Stack, tmp_path: Path) -> None:
    configure(stack, tmp_path)
    file_id = await stack.upload([chat_line("a")])
    record = await stack.files.get("p1", file_id)
    assert record is not None
    doc = new_batch_document(project="p1", endpoint=CHAT, input_file_id=file_id,
                             input={"kind": "file", "key": record.key, "bytes": record.bytes},
                             completion_window="24h", expires_in_s=86400.0, model="null-model")
    doc["outbox"] = []
    del doc["outbox_at"]
    await stack.batches.insert(doc)
    assert await stack.files.pin("p1", file_id, doc["_id"]) is not None
    # The process that wrote the terminal status died before it released anything.
    assert await stack.batches.transition(doc["_id"], "validating", "failed", set={CLEANUP_FIELD: True}, event=False)
    assert await stack.files.delete("p1", file_id)
    assert await stack.store.head(record.key) is not None  # pinned: the bytes stay

    await stack.start_dispatcher()

    async def released() -> bool:
        await stack.files.sweep(stale_upload_seconds=3600, now=time.time() + 120)
        return await stack.store.head(record.key) is None

    await wait_for(released, 30, interval=0.3, what="the pinned input to be released and removed")
