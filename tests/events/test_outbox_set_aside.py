"""An event that can never be published is set aside, on the real broker and database: logged, counted,
recorded on its batch and pulled from the outbox, while the events after it go out."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from events.bus import Consumer, Producer
from events.topics import batch_events_topic, ensure_topics
from schemas.events import OUTBOX_EVENT_MAX_BYTES, TRUNCATED_ATTRIBUTE, batch_event
from services.settings import Settings
from services.state.batches import BatchStore, new_batch_document, to_api
from services.state.outbox import SET_ASIDE_FIELD, EventPublisher, set_aside_key
from services.stores.mongo import close_database, open_database


@pytest_asyncio.fixture(loop_scope="session")
async def store(settings: Settings) -> AsyncIterator[BatchStore]:
    db = open_database(settings)
    await ensure_topics(settings, [batch_events_topic(settings)])
    try:
        yield BatchStore(db)
    finally:
        await close_database(db)


def new_batch(*, now: float | None = None) -> dict[str, Any]:
    return new_batch_document(project="p", endpoint="/v1/embeddings", input_file_id="file-x",
                              input={"kind": "file", "key": "k"}, completion_window="24h", expires_in_s=86400,
                              now=now)


def poison(doc: dict[str, Any], event_type: str = "batch.in_progress") -> dict[str, Any]:
    """An event over the producer's limit with nothing that may be cut (what an older writer could leave)."""
    data = {**to_api(doc), "metadata": {"blob": "z" * 2_000_000}}
    return batch_event(event_type, data).model_dump(mode="json")


async def events_of(settings: Settings, batch_ids: set[str], count: int) -> list[dict[str, Any]]:
    """The first `count` events of these batches on the topic, read in a group of the test's own."""
    found: list[dict[str, Any]] = []
    async with Consumer(settings, [batch_events_topic(settings)], group_id=f"test-{uuid.uuid4().hex}") as consumer:
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            for record in await consumer.getmany(timeout_ms=500):
                if record.key is not None and record.key.decode() in batch_ids:
                    found.append(orjson.loads(record.value))
    return found


def set_aside_count(publisher: EventPublisher, reason: str) -> float:
    return publisher.set_aside.labels(reason)._value.get()


async def test_an_oversize_event_is_set_aside_and_the_next_one_goes_out(
    settings: Settings, store: BatchStore, caplog: pytest.LogCaptureFixture
) -> None:
    doc = new_batch()
    bad = poison(doc)
    doc["outbox"] = [bad, *doc["outbox"]]  # ahead of batch.created, on the same key and partition
    await store.insert(doc)
    async with Producer(settings) as producer:
        publisher = EventPublisher(store, producer, settings)
        assert await publisher.publish_outbox(doc) == 1
        assert set_aside_count(publisher, "too_large") == 1

    events = await events_of(settings, {doc["_id"]}, 1)
    assert [e["id"] for e in events] == [f"{doc['_id']}.created"]
    after = await store.get(doc["_id"])
    assert after is not None and after["outbox"] == [] and "outbox_at" not in after
    record = after[SET_ASIDE_FIELD][set_aside_key(bad["id"])]
    assert record["type"] == "batch.in_progress" and record["reason"] == "too_large" and record["bytes"] > 2_000_000
    assert bad["id"] in caplog.text and "set aside" in caplog.text


async def test_a_poison_batch_does_not_hold_up_republishing(settings: Settings, store: BatchStore) -> None:
    stuck = new_batch(now=time.time() - 120)  # the oldest: first in line for the republisher
    stuck["outbox"] = [poison(stuck, "batch.created")]
    healthy = new_batch(now=time.time() - 60)
    await store.insert(stuck)
    await store.insert(healthy)
    async with Producer(settings) as producer:
        publisher = EventPublisher(store, producer, settings)
        assert await publisher.republish_stale(older_than_s=5) == 1
        assert await publisher.republish_stale(older_than_s=5) == 0  # nothing retried forever
        assert set_aside_count(publisher, "too_large") == 1

    assert [e["id"] for e in await events_of(settings, {stuck["_id"], healthy["_id"]}, 1)] == [
        f"{healthy['_id']}.created"
    ]
    for batch_id in (stuck["_id"], healthy["_id"]):
        after = await store.get(batch_id)
        assert after is not None and after["outbox"] == [] and "outbox_at" not in after


async def test_an_event_over_a_smaller_producer_limit_goes_out_cut(settings: Settings, store: BatchStore) -> None:
    small = settings.model_copy(update={"kafka_max_message_bytes": 16 * 1024})
    doc = new_batch()
    await store.insert(doc)
    errors = [{"code": "invalid_method", "message": "m" * 150, "param": "method", "line": n} for n in range(1, 101)]
    failed = await store.transition(doc["_id"], "validating", "failed", set={"errors": errors})
    assert failed is not None
    stored = failed["outbox"][-1]
    assert len(orjson.dumps(stored)) <= OUTBOX_EVENT_MAX_BYTES
    async with Producer(small) as producer:
        assert producer.max_message_bytes == 16 * 1024  # the producer's own limit follows the setting
        publisher = EventPublisher(store, producer, small)
        assert await publisher.publish_outbox(failed) == 2

    created, failed_event = await events_of(settings, {doc["_id"]}, 2)
    assert created["type"] == "batch.created" and TRUNCATED_ATTRIBUTE not in created
    assert failed_event["type"] == "batch.failed" and failed_event[TRUNCATED_ATTRIBUTE] is True
    assert len(orjson.dumps(failed_event)) <= 16 * 1024
    assert failed_event["data"]["errors"]["data"][-1]["code"] == "errors_truncated"
