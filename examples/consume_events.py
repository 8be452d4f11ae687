"""Consume offhours batch events from Kafka: a runnable example of the events-topic contract (docs/events.md).

Needs only `aiokafka` (pip install aiokafka). Run it against a local stack (`make run`) or any
deployment:

    python examples/consume_events.py --bootstrap 127.0.0.1:19092 --topic offhours.batch.events \
        --group my-downstream-service

Each event is checked against the contract, de-duplicated by its `id`, printed as one JSON line,
and only then committed — so a crash re-reads, never skips. Use your own consumer group: every
group gets every event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import OrderedDict
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPES = {
    "batch.created", "batch.in_progress", "batch.progress", "batch.finalizing", "batch.completed",
    "batch.failed", "batch.expired", "batch.cancelling", "batch.cancelled",
}
TERMINAL_TYPES = {"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"}


class ContractError(ValueError):
    pass


def check_envelope(key: bytes | None, headers: dict[str, bytes], event: Any) -> dict[str, Any]:
    """The contract of docs/events.md, as a consumer can verify it. Raises ContractError."""
    if not isinstance(event, dict):
        raise ContractError("the value is not a JSON object")
    if headers.get("content-type") != CONTENT_TYPE.encode():
        raise ContractError(f"content-type header is {headers.get('content-type')!r}")
    if event.get("specversion") != SPEC_VERSION:
        raise ContractError(f"specversion is {event.get('specversion')!r}")
    for attribute in ("id", "source", "type", "subject", "time", "datacontenttype"):
        if not isinstance(event.get(attribute), str) or not event[attribute]:
            raise ContractError(f"attribute {attribute!r} is missing")
    if event["type"] not in EVENT_TYPES:
        raise ContractError(f"unknown type {event['type']!r}")
    data = event.get("data")
    if not isinstance(data, dict) or data.get("object") != "batch":
        raise ContractError("data is not a Batch object")
    if not (key is not None and key.decode() == event["subject"] == data.get("id")):
        raise ContractError("key, subject and data.id differ")
    # batch.<status> carries the batch in that status (batch.created: `validating`); batch.progress any.
    expected = "validating" if event["type"] == "batch.created" else event["type"].removeprefix("batch.")
    if event["type"] != "batch.progress" and data.get("status") != expected:
        raise ContractError(f"{event['type']} carries a batch in status {data.get('status')!r}")
    return event


class SeenIds:
    """The ids handled recently. Delivery is at-least-once: the same event may arrive twice.

    A real service keeps this durable (e.g. a unique index on the event id in its own database,
    written in the same transaction as the event's effect); a bounded in-memory set is enough for
    the replays of one session.
    """

    def __init__(self, size: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first_time(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


async def consume(args: argparse.Namespace) -> int:
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,  # commit after handling: a crash re-reads instead of skipping
        auto_offset_reset="earliest",  # a new group starts at the oldest retained event
    )
    await consumer.start()
    seen = SeenIds()
    handled = 0
    finished = False
    try:
        while not finished and (args.max_events is None or handled < args.max_events):
            batches = await consumer.getmany(timeout_ms=int(args.idle_timeout * 1000))
            if not batches:
                print(f"no event for {args.idle_timeout:g}s; stopping", file=sys.stderr)
                break
            for tp, records in batches.items():
                for record in records:
                    headers = {k: bytes(v) for k, v in record.headers or ()}
                    try:
                        event = check_envelope(record.key, headers, json.loads(record.value))
                    except (ContractError, ValueError) as exc:
                        print(f"skipping offset {record.offset} of {tp}: {exc}", file=sys.stderr)
                        continue
                    if not seen.first_time(event["id"]):
                        continue  # a re-published duplicate: already handled
                    if args.batch and event["subject"] != args.batch:
                        continue
                    handle(event, record.partition, record.offset)
                    handled += 1
                    finished = finished or (args.until_terminal and event["type"] in TERMINAL_TYPES)
                # Commit past what this partition returned (Kafka's "next offset to read").
                await consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "")})
    finally:
        await consumer.stop()
    return 0


def handle(event: dict[str, Any], partition: int, offset: int) -> None:
    """Your code goes here. This example prints one JSON line per event."""
    batch = event["data"]
    print(json.dumps({
        "partition": partition, "offset": offset, "id": event["id"], "type": event["type"],
        "batch_id": batch["id"], "status": batch["status"], "request_counts": batch.get("request_counts"),
        "time": event["time"],
    }), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Print offhours batch events from Kafka, checked and de-duplicated.")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="offhours.batch.events", help="the events topic ({prefix}.batch.events)")
    parser.add_argument("--group", default="events-example", help="your consumer group")
    parser.add_argument("--batch", default=None, help="only this batch's events")
    parser.add_argument("--until-terminal", action="store_true", help="stop after a final event (completed, …)")
    parser.add_argument("--max-events", type=int, default=None, help="stop after this many events")
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="stop after this many seconds without events")
    return asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

