"""Topics and the producer/consumer wrappers against the real local broker (Tansu)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from events.bus import Consumer, Producer, header_value, loads
from events.topics import (
    batch_events_topic,
    ensure_topics,
    sanitize_topic_component,
    work_results_topic,
    work_topic,
)
from services.settings import Settings


def test_topic_names(settings: Settings) -> None:
    p = settings.topic_prefix
    assert batch_events_topic(settings) == f"{p}.batch.events"
    assert work_results_topic(settings) == f"{p}.work.results"
    assert work_topic(settings, "smollm2-135m") == f"{p}.work.smollm2-135m"
    odd = work_topic(settings, "org/model:q4")
    assert odd.startswith(f"{p}.work.org_model_q4-") and all(c.isalnum() or c in "._-" for c in odd)
    # Lossy mapping must not make two models share a work topic.
    assert sanitize_topic_component("a/b") != sanitize_topic_component("a_b")
    assert len(work_topic(settings, "m" * 400)) <= 249


async def test_ensure_topics_is_idempotent(settings: Settings) -> None:
    names = [batch_events_topic(settings), work_topic(settings, "m1")]
    await ensure_topics(settings, names, partitions=3)
    await ensure_topics(settings, names, partitions=3)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        assert set(names) <= set(await admin.list_topics())
        meta = await admin.describe_topics(names)
        assert {len(t["partitions"]) for t in meta} == {3}
    finally:
        await admin.close()


async def _collect(consumer: Consumer, n: int) -> list:
    out: list = []
    async with asyncio.timeout(60):  # a safety net against hangs, not a timing assertion
        while len(out) < n:
            out += await consumer.getmany(timeout_ms=500)
    return out


@pytest.mark.slow  # waits out consumer-group sessions and rebalances
async def test_produce_consume_commit_resume(settings: Settings) -> None:
    topic = work_results_topic(settings)
    await ensure_topics(settings, [topic], partitions=2)
    async with Producer(settings) as producer:
        for i in range(6):
            meta = await producer.send(topic, f"k{i % 2}", orjson.dumps({"i": i}), headers={"h": f"v{i}"})
            assert meta.topic == topic
        await producer.send_json(topic, "k0", {"i": 6})

    group = f"{settings.topic_prefix}-group"
    async with Consumer(settings, [topic], group_id=group) as consumer:
        records = await _collect(consumer, 7)
        assert sorted(loads(r.value)["i"] for r in records) == list(range(7))
        by_key = {}
        for r in records:
            by_key.setdefault(r.key, []).append(loads(r.value)["i"])
        assert by_key[b"k1"] == [1, 3, 5]  # one key -> one partition -> in order
        assert header_value(records[0], "h") is not None
        # Commit only the first record of each partition: the rest must be redelivered.
        firsts = {}
        for r in records:
            firsts.setdefault(r.partition, r)
        await consumer.commit(list(firsts.values()))

    async with Consumer(settings, [topic], group_id=group) as consumer:
        again = await _collect(consumer, 7 - len(firsts))
        assert sorted(loads(r.value)["i"] for r in again) == sorted(
            loads(r.value)["i"] for r in records if r not in firsts.values()
        )
        await consumer.commit()  # everything

    async with Producer(settings) as producer:
        await producer.send(topic, "k0", b'{"i": 7}')
    async with Consumer(settings, [topic], group_id=group) as consumer:
        tail = await _collect(consumer, 1)
        assert [loads(r.value)["i"] for r in tail] == [7]
