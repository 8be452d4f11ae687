"""A rebalance that takes a partition while its records are being handled: the commit fails, is logged
and counted, and the dispatcher carries on (the records are redelivered; every handler is idempotent)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from events.topics import batch_events_topic, ensure_topics
from services.dispatcher.service import dispatcher_group
from services.state.batches import new_batch_id
from tests.support.inputs import InputServer, create_url_batch
from tests.support.lines import chat_line
from tests.support.models import write_models_file
from tests.support.stack import Stack
from tests.support.wait import wait_for

PARTITIONS = 4  # what ensure_topics gives the events topic


@pytest_asyncio.fixture(loop_scope="session")
async def inputs() -> AsyncIterator[InputServer]:
    server = await InputServer().start()
    yield server
    await server.stop()


def ids_on_every_partition() -> list[str]:
    """One batch id per events partition (the key is the batch id): whichever partitions move, one
    of them has a handler in flight."""
    partitioner, found = DefaultPartitioner(), {}
    while len(found) < PARTITIONS:
        batch_id = new_batch_id()
        found.setdefault(partitioner(batch_id.encode(), list(range(PARTITIONS)), list(range(PARTITIONS))), batch_id)
    return list(found.values())


async def test_a_commit_failure_after_a_rebalance_is_counted_and_survived(
    stack: Stack, inputs: InputServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="events.bus")
    models = write_models_file(tmp_path / "models.toml", None, null_model=2)
    stack.settings = stack.settings.model_copy(update={"models_file": models})
    await stack.start_worker()
    await ensure_topics(stack.settings, [batch_events_topic(stack.settings)])
    dispatcher = await stack.start_dispatcher()
    held = ids_on_every_partition()
    for i, batch_id in enumerate(held):
        await create_url_batch(stack, f"{inputs.base}/hold", project=f"p{i}", batch_id=batch_id)
    await wait_for(lambda: inputs.held == PARTITIONS, 60, what="a handler in flight on every partition")

    intruder = AIOKafkaConsumer(batch_events_topic(stack.settings), bootstrap_servers=stack.settings.kafka_bootstrap_servers,
                                group_id=dispatcher_group(stack.settings), enable_auto_commit=False,
                                session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await intruder.start()
    try:
        await wait_for(lambda: bool(intruder.assignment()), 60, interval=0.2, what="the rebalance")
        inputs.release()  # the handlers finish, on partitions some of which are no longer ours
        failures = dispatcher.metrics.commit_failures.labels("events")
        await wait_for(lambda: failures._value.get() >= 1, 60, interval=0.2, what="a failed commit")
    finally:
        await intruder.stop()
    assert any("commit of group" in r.getMessage() for r in caplog.records)
    for batch_id in held:
        assert (await stack.wait_status(batch_id))["status"] == "failed"

    # It carries on: the next batch is validated and completed.
    batch_id = await stack.create_batch(await stack.upload([chat_line(f"r{i}") for i in range(4)]))
    assert (await stack.wait_status(batch_id, timeout_s=90))["status"] == "completed"
