"""The events topic as a public contract (docs/events.md): examples/consume_events.py, run as a user would,
reads every event of a batch in order, in its own consumer group, and checks each envelope."""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest

from schemas.events import CLOUDEVENTS_CONTENT_TYPE, batch_event
from services.settings import Settings
from services.state.batches import to_api
from tests.support.notifier import EXAMPLE, Batches, run_example


@pytest.mark.slow  # the example as a process, ended by its idle timeout
async def test_the_example_reads_a_batch_in_order_checked_and_deduplicated(batches: Batches, wh_settings: Settings) -> None:
    other = await batches.create("p-other")
    batch_id = await batches.create("p-events")
    await batches.advance(batch_id, ["in_progress"])
    for seq in (1, 2):
        doc = await batches.store.update_fields(batch_id, {"request_counts.completed": seq}, progress_seq=seq)
        await batches.publisher.publish_outbox(doc)
    await batches.advance(batch_id, ["finalizing", "completed"])
    # a re-published duplicate (what the outbox does after a crash) and a record that is not a CloudEvent
    doc = await batches.store.get(batch_id)
    duplicate = batch_event("batch.in_progress", to_api(doc), at=doc["in_progress_at"]).model_dump(mode="json")
    producer, topic = batches.publisher.producer, batches.publisher.topic
    await producer.send(topic, batch_id, orjson.dumps(duplicate), {"content-type": CLOUDEVENTS_CONTENT_TYPE})
    await producer.send(topic, batch_id, b"not json", {"content-type": CLOUDEVENTS_CONTENT_TYPE})
    await batches.advance(other, ["failed"])

    lines, stderr = await run_example(wh_settings, "--batch", batch_id, "--idle-timeout", "5")
    assert [line["type"] for line in lines] == [
        "batch.created", "batch.in_progress", "batch.progress", "batch.progress", "batch.finalizing", "batch.completed"
    ]
    assert [line["id"] for line in lines] == [
        f"{batch_id}.created", f"{batch_id}.in_progress", f"{batch_id}.progress.1", f"{batch_id}.progress.2",
        f"{batch_id}.finalizing", f"{batch_id}.completed",
    ]
    assert [line["status"] for line in lines] == [
        "validating", "in_progress", "in_progress", "in_progress", "finalizing", "completed"
    ]
    assert [line["request_counts"]["completed"] for line in lines[2:4]] == [1, 2]
    assert len({line["partition"] for line in lines}) == 1  # key = batch id: one partition, one order
    offsets = [line["offset"] for line in lines]
    assert offsets == sorted(offsets)
    assert "not a JSON object" in stderr or "Expecting value" in stderr  # the junk record was reported, skipped


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e, h: e.pop("specversion"), "specversion"),
        (lambda e, h: e.update(type="batch.exploded"), "unknown type"),
        (lambda e, h: e.update(subject="batch_other"), "differ"),
        (lambda e, h: e["data"].update(status="failed"), "status"),
        (lambda e, h: h.pop("content-type"), "content-type"),
    ],
)
def test_the_example_checks_every_envelope_rule(mutate: Any, message: str) -> None:
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import consume_events
    finally:
        sys.path.pop(0)
    batch = {"id": "batch_1", "object": "batch", "status": "completed", "request_counts": {"total": 0}}
    event = batch_event("batch.completed", batch).model_dump(mode="json")
    headers = {"content-type": CLOUDEVENTS_CONTENT_TYPE.encode()}
    assert consume_events.check_envelope(b"batch_1", headers, event)["id"] == "batch_1.completed"
    mutate(event, headers)
    with pytest.raises(consume_events.ContractError, match=message):
        consume_events.check_envelope(b"batch_1", headers, event)
