"""One project cannot crowd out the others through the notifier, on the real servers: endpoints per project
are bounded, deliveries to one receiving host share one bound whatever endpoint or project they come from,
a failed offset commit after a rebalance does not stop the notifier, and ended deliveries do not stay forever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from events.bus import Consumer, Producer
from events.topics import batch_events_topic, ensure_topics
from services.notifier.consume import consume, notifier_consumer, notifier_group
from services.notifier.deliveries import DeliveryStore
from services.notifier.metrics import NotifierMetrics
from services.notifier.results import ResultWriter
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from tests.support.api import Api
from tests.support.gated_receiver import gated_receiver
from tests.support.notifier import Batches, MakeReceiver, StartNotifier
from tests.support.wait import wait_for


async def _create_endpoint(api: Api, key: str, url: str) -> tuple[int, dict[str, Any]]:
    return await api.call("POST", "/v1/webhook_endpoints", key, json={"url": url})


async def test_the_endpoint_past_the_project_limit_is_refused_with_429(
    api: Api, make_receiver: MakeReceiver
) -> None:
    receiver = await make_receiver()
    key, _ = await api.key()
    limit = api.settings.project_max_webhook_endpoints
    assert limit == 20
    created = []
    for _ in range(limit):
        status, body = await _create_endpoint(api, key, receiver.url)
        assert status == 200, body
        created.append(body["id"])

    status, body = await _create_endpoint(api, key, receiver.url)
    assert status == 429
    assert body["error"]["code"] == "too_many_webhook_endpoints" and "20" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    status, page = await api.call("GET", "/v1/webhook_endpoints", key, params={"limit": "100"})
    assert status == 200 and len(page["data"]) == limit  # the refused one was not kept

    other_key, _ = await api.key()  # another project has its own allowance
    assert (await _create_endpoint(api, other_key, receiver.url))[0] == 200
    status, _ = await api.call("DELETE", f"/v1/webhook_endpoints/{created[0]}", key)
    assert status == 200
    assert (await _create_endpoint(api, key, receiver.url))[0] == 200  # a deleted endpoint no longer counts


async def test_deliveries_to_one_host_share_its_bound_across_endpoints_and_projects(
    api: Api, batches: Batches, start_notifier: StartNotifier
) -> None:
    async with gated_receiver() as receiver:
        targets = []
        for project_endpoints in (3, 2):
            key, project = await api.key()
            for n in range(project_endpoints):
                status, body = await _create_endpoint(api, key, receiver.url(f"{project}/{n}"))
                assert status == 200, body
            targets.append(project)
        notifier = await start_notifier(webhook_max_concurrency_per_host=2, webhook_max_concurrency_per_endpoint=8,
                                        webhook_timeout_seconds=60.0)
        for project in targets:
            await batches.complete(project)

        # Every delivery is in the pool, waiting for a slot or held by the receiver: none has gone
        # anywhere else, so more than 2 at the receiver would mean the host's bound did not hold.
        await wait_for(lambda: notifier.pool.queued == 5 and receiver.in_flight >= 2,
                       what=lambda: f"5 deliveries in the pool (got {notifier.pool.queued}), "
                                    f"2 at the receiver (got {receiver.in_flight})")
        receiver.open()
        await wait_for(lambda: receiver.answered == 5, what=lambda: f"5 answered (got {receiver.answered})")
    assert len(set(receiver.paths)) == 5  # one per endpoint, of two projects
    assert receiver.max_in_flight == 2


async def test_a_commit_failure_after_a_rebalance_is_counted_and_consuming_goes_on(
    wh_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    topic = batch_events_topic(wh_settings)
    await ensure_topics(wh_settings, [topic])
    async with Producer(wh_settings) as producer:
        for partition in range(4):  # a record on every partition, so the first poll spans them
            await producer.raw.send_and_wait(topic, b'{"not": "a batch event"}', partition=partition)
    db = open_database(wh_settings)
    metrics = NotifierMetrics(CollectorRegistry())
    consumer = notifier_consumer(wh_settings)
    polls: list[set[TopicPartition]] = []
    revoked: set[TopicPartition] = set()
    stop = asyncio.Event()

    async def admit(records: Sequence[ConsumerRecord[bytes, bytes]], _stop: asyncio.Event,
                    attempted: asyncio.Event) -> bool:
        polls.append({TopicPartition(r.topic, r.partition) for r in records})
        attempted.set()  # the loop polls on meanwhile, and so takes part in the rebalance
        if len(polls) == 1:
            # A second member joins and takes some of these records' partitions: committing them fails.
            async with Consumer(wh_settings, [topic], group_id=notifier_group(wh_settings)) as intruder:
                taken = await wait_for(lambda: polls[0] & intruder.assignment(), 60,
                                       what=lambda: f"the second member to take one of {sorted(polls[0])}")
                revoked.update(taken)
                await wait_for(lambda: not consumer.assignment() & taken, 60, what="the first member to give it up")
        return True

    async def committed() -> bool:
        offsets = [await consumer.raw.committed(tp) for tp in revoked]
        return bool(revoked) and all(offset == 1 for offset in offsets)

    await consumer.start()
    task = asyncio.create_task(consume(consumer, admit, ResultWriter(DeliveryStore(db)), stop, metrics))
    try:
        with caplog.at_level(logging.WARNING, logger="events.bus"):
            await wait_for(lambda: metrics.commit_failures._value.get() == 1 or task.done(), 120,
                           what="a failed commit counted")
            assert not task.done()
            # Still consuming: once the second member has left, the uncommitted records come again
            # and are committed this time.
            await wait_for(committed, 90, what="the redelivered records committed")
        assert not task.done() and metrics.commit_failures._value.get() == 1
        assert any(revoked <= poll for poll in polls[1:])
        assert "commit of group" in caplog.text and "redelivered" in caplog.text
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await consumer.stop()
        await close_database(db)


@pytest.mark.slow  # the database's TTL monitor runs once a minute, as MongoDB's does
async def test_ended_deliveries_are_removed_after_their_ttl(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier, wh_settings: Settings
) -> None:
    ok, gone = await make_receiver(), await make_receiver(default=410)
    key, project = await api.key()
    for url in (ok.url, gone.url):
        assert (await _create_endpoint(api, key, url))[0] == 200
    # Retries end at once (horizon 0), so the 410 receiver's delivery ends dead after one attempt.
    await start_notifier(webhook_delivery_ttl_seconds=1.0, webhook_retry_horizon_seconds=0.0)
    batch_id = await batches.complete(project)
    db = open_database(wh_settings)
    deliveries = DeliveryStore(db)
    try:
        async def statuses() -> list[str]:
            status, page = await api.call("GET", "/v1/webhook_deliveries", key, params={"batch_id": batch_id})
            assert status == 200
            return sorted(d["status"] for d in page["data"])

        await wait_for(lambda: _equals(statuses(), ["dead", "delivered"]), what="one delivered, one dead")
        await wait_for(lambda: _equals(statuses(), []), timeout_s=150, what="the ended deliveries removed")
        assert await deliveries.for_batch(batch_id) is None
    finally:
        await close_database(db)


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected
