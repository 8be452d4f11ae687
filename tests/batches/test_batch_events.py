"""Batch events on the real Kafka-API broker: the outbox publishes them, a consumer group reads them."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from events.bus import Consumer, Producer, header_value
from events.topics import batch_events_topic, ensure_topics
from schemas.events import CLOUDEVENTS_CONTENT_TYPE, CloudEvent
from services.settings import Settings
from services.state.batches import BatchStore, new_batch_document, to_api
from services.state.outbox import EventPublisher
from services.stores.mongo import close_database, open_database
from tests.support.api import Api
from tests.support.lines import request_lines


async def read_events(settings: Settings, batch_id: str, count: int, timeout_s: float = 30) -> list[tuple[Any, ...]]:
    """The first `count` records keyed `batch_id`, read by a consumer in a group of its own."""
    found: list[tuple[Any, ...]] = []
    async with Consumer(settings, [batch_events_topic(settings)], group_id=f"test-{uuid.uuid4().hex}") as consumer:
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            for record in await consumer.getmany(timeout_ms=500):
                if record.key == batch_id.encode():
                    found.append((record.key.decode(), header_value(record, "content-type"),
                                  orjson.loads(record.value), record.partition))
    return found


async def test_api_events_reach_the_topic(api: Api) -> None:
    key, project = await api.key()
    client = api.client(key)
    batch = await client.batches.create(input_file_id=await api.add_file(project, request_lines(1, model="null-model")),
                                        endpoint="/v1/chat/completions", completion_window="24h",
                                        metadata={"ds_name": "events"})
    cancelled = await client.batches.cancel(batch.id)

    events = await read_events(api.settings, batch.id, 2)
    assert [e[2]["type"] for e in events] == ["batch.created", "batch.cancelling"]
    assert len({e[3] for e in events}) == 1  # one key, one partition: ordered
    for key_, content_type, value, _ in events:
        assert key_ == batch.id and content_type == CLOUDEVENTS_CONTENT_TYPE.encode()
        event = CloudEvent.model_validate(value)
        assert event.specversion == "1.0" and event.subject == batch.id and event.source
        assert event.datacontenttype == "application/json" and event.time and event.time.endswith("Z")
    created, cancelling = (e[2] for e in events)
    assert created["id"] == f"{batch.id}.created" and cancelling["id"] == f"{batch.id}.cancelling"
    # `data` is the Batch object exactly as the API returned it at that moment.
    assert created["data"] == batch.model_dump(mode="json")
    assert cancelling["data"] == cancelled.model_dump(mode="json")
    assert (await api.store.get(batch.id))["outbox"] == []


async def test_republish_sends_what_a_crash_left_in_the_outbox(settings: Settings) -> None:
    db = open_database(settings)
    store = BatchStore(db)
    await ensure_topics(settings, [batch_events_topic(settings)])
    try:
        # A writer that died after its write and before its publish: the event waits in the document.
        stale = await store.insert(new_batch_document(
            project="p", endpoint="/v1/embeddings", input_file_id="file-x", input={"kind": "file", "key": "k"},
            completion_window="24h", expires_in_s=86400, now=time.time() - 60,
        ))
        fresh = await store.insert(new_batch_document(
            project="p", endpoint="/v1/embeddings", input_file_id="file-y", input={"kind": "file", "key": "k"},
            completion_window="24h", expires_in_s=86400,
        ))
        async with Producer(settings) as producer:
            publisher = EventPublisher(store, producer, settings)
            assert await publisher.republish_stale(older_than_s=5) == 1
            assert await publisher.republish_stale(older_than_s=5) == 0  # nothing left to send
        after = await store.get(stale["_id"])
        assert after["outbox"] == [] and "outbox_at" not in after
        assert len((await store.get(fresh["_id"]))["outbox"]) == 1  # not stale yet: its writer is on it

        [(key, _, value, _)] = await read_events(settings, stale["_id"], 1)
        assert key == stale["_id"] and value["id"] == f"{stale['_id']}.created"
        assert value["data"] == to_api(stale)
    finally:
        await close_database(db)


async def test_a_failed_send_keeps_the_event(settings: Settings) -> None:
    db = open_database(settings)
    store = BatchStore(db)
    try:
        doc = await store.insert(new_batch_document(
            project="p", endpoint="/v1/embeddings", input_file_id="file-x", input={"kind": "file", "key": "k"},
            completion_window="24h", expires_in_s=86400,
        ))
        moved = await store.transition(doc["_id"], "validating", "in_progress")
        # The send fails (here: the producer was closed under it). An event over the size limit is
        # another matter: it can never be sent, and is set aside (tests/events/test_outbox_set_aside.py).
        async with Producer(settings) as producer:
            publisher = EventPublisher(store, producer, settings)
            await producer.raw.stop()
            assert await publisher.publish_outbox(moved) == 0
        kept = await store.get(doc["_id"])
        assert [e["type"] for e in kept["outbox"]] == ["batch.created", "batch.in_progress"]
        assert kept["outbox_at"] == doc["outbox_at"]
    finally:
        await close_database(db)


async def test_a_hung_send_times_out_and_keeps_the_event(settings: Settings) -> None:
    db = open_database(settings)
    store = BatchStore(db)
    try:
        doc = await store.insert(new_batch_document(
            project="p", endpoint="/v1/embeddings", input_file_id="file-x", input={"kind": "file", "key": "k"},
            completion_window="24h", expires_in_s=86400,
        ))
        producer = Producer(settings)
        await producer.start()
        await producer.raw.stop()  # aiokafka's send on a stopped producer never completes
        publisher = EventPublisher(store, producer, settings, send_timeout_s=0.5)
        assert await publisher.publish_outbox(doc) == 0
        assert [e["type"] for e in (await store.get(doc["_id"]))["outbox"]] == ["batch.created"]
    finally:
        await close_database(db)
