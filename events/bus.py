"""Thin aiokafka wrappers: the few Kafka settings every offhours service must get right, in one place.

Delivery is at-least-once everywhere (docs/architecture.md, "Invariants"): a producer awaits the
broker's ack before a caller moves on, and a consumer commits an offset only after the record's
effects are durable. Consumers must therefore be idempotent; these wrappers do not try to hide
redelivery.

Settings chosen for portability to Tansu (the local broker) as well as Apache Kafka:
- no idempotent or transactional producer — Tansu does not implement them;
- a short consumer session timeout (see Consumer) — Tansu's rebalances wait for stale members;
- `auto_offset_reset="earliest"` with committed offsets — Tansu's `latest`/end offsets are
  unreliable, and "earliest" is also the right choice for a new group: a work topic's first
  consumer must see the work published before it joined.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

from services.settings import Settings

log = logging.getLogger(__name__)

Headers = Mapping[str, str | bytes] | Sequence[tuple[str, bytes]]


def _headers(headers: Headers | None) -> list[tuple[str, bytes]] | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in items]


def header_value(record: ConsumerRecord[Any, Any], name: str) -> bytes | None:
    """The value of header `name` on a consumed record, or None."""
    for key, value in record.headers or ():
        if key == name:
            return bytes(value)
    return None


class Producer:
    """Sends keyed messages and waits for the broker's acknowledgement of each."""

    def __init__(self, settings: Settings, client_id: str = "offhours", **overrides: Any) -> None:
        options: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap_servers,
            "client_id": client_id,
            # Every in-sync replica has the message before send() returns: a crash right after
            # send() can then not lose an event we already acted on.
            "acks": "all",
            # Tansu has no idempotent producer; at-least-once + idempotent consumers instead.
            "enable_idempotence": False,
            # Small linger: batches concurrent sends (e.g. many chunks) without adding latency.
            "linger_ms": 5,
            # The one size limit every sender fits its messages to (schemas/events.py fits events to
            # it): a message over it fails here at once, never after a round trip to the broker.
            "max_request_size": settings.kafka_max_message_bytes,
        }
        options.update(overrides)
        self.max_message_bytes = int(options["max_request_size"])
        self._producer = AIOKafkaProducer(**options)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._producer.start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._producer.stop()  # flushes pending sends first

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def send(
        self, topic: str, key: str | None, value: bytes, headers: Headers | None = None
    ) -> RecordMetadata:
        """Send one message and wait until the broker acknowledged it.

        key: records with the same key go to the same partition and stay in order (batch id,
        chunk id); None spreads records over partitions.
        """
        return await self._producer.send_and_wait(
            topic,
            value=value,
            key=key.encode() if key is not None else None,
            headers=_headers(headers),
        )

    async def send_json(
        self, topic: str, key: str | None, obj: Any, headers: Headers | None = None
    ) -> RecordMetadata:
        """`send` with `obj` serialized by orjson (fast, handles datetimes and pydantic dumps)."""
        return await self.send(topic, key, orjson.dumps(obj), headers)

    @property
    def raw(self) -> AIOKafkaProducer:
        return self._producer


def consumer_options(settings: Settings) -> dict[str, Any]:
    """The consumer settings the dispatcher, the workers and the notifier share (pass as overrides)."""
    session_ms = int(settings.kafka_session_timeout_seconds * 1000)
    return {
        # Every hop of a batch (created event -> chunks -> results) is a fetch; a broker that sits on an
        # empty fetch for the default 500 ms before answering (Tansu does) adds that to each hop.
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(500, session_ms // 3),
        "max_poll_interval_ms": int(settings.kafka_max_poll_interval_seconds * 1000),
    }


class Consumer:
    """A consumer-group member with manual commits.

    Typical loop:

        async with Consumer(settings, [topic], group_id="dispatcher") as consumer:
            async for record in consumer:
                await handle(record)             # make its effects durable first...
                await consumer.commit(record)    # ...then move the group's offset past it
    """

    def __init__(
        self,
        settings: Settings,
        topics: Iterable[str],
        group_id: str,
        client_id: str = "offhours",
        **overrides: Any,
    ) -> None:
        self.topics = list(topics)
        self.group_id = group_id
        options: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap_servers,
            "group_id": group_id,
            "client_id": client_id,
            # Commit only after processing: auto-commit could mark a record done before its
            # effects are durable and lose it on a crash.
            "enable_auto_commit": False,
            # A new group starts at the beginning (see module docstring for why not "latest").
            "auto_offset_reset": "earliest",
            # Short session (Kafka's smallest default-allowed value): Tansu does not always honour
            # LeaveGroup, so a restarted member's rejoin waits for the old member's session to
            # expire (~session timeout + a few seconds). Heartbeats run in aiokafka's background
            # task, so long record processing is governed by max_poll_interval_ms, not this.
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        }
        options.update(overrides)
        self._consumer = AIOKafkaConsumer(*self.topics, **options)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._consumer.start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()  # leaves the group so others rebalance promptly

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __aiter__(self) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
        return self._consumer.__aiter__()

    async def getone(self) -> ConsumerRecord[bytes, bytes]:
        return await self._consumer.getone()

    async def getmany(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Up to `max_records` records from all assigned partitions, waiting at most `timeout_ms`."""
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return [record for records in batches.values() for record in records]

    async def commit(
        self, record: ConsumerRecord[Any, Any] | Iterable[ConsumerRecord[Any, Any]] | None = None
    ) -> None:
        """Commit the group's position.

        record(s) given: commit just past them (offset + 1, Kafka's "next to read" convention),
        for their partitions only — use this when records are handled one at a time.
        None: commit everything returned so far on every assigned partition.
        """
        if record is None:
            await self._consumer.commit()
            return
        records = [record] if isinstance(record, ConsumerRecord) else list(record)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset < r.offset + 1:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "")
        if offsets:
            await self._consumer.commit(offsets)

    async def try_commit(
        self, record: ConsumerRecord[Any, Any] | Iterable[ConsumerRecord[Any, Any]] | None = None
    ) -> bool:
        """`commit`, but a failure is logged and answered False instead of raised.

        A commit fails when a rebalance took the partition (CommitFailedError) or the broker is
        briefly away. Either way nothing is lost: the records stay uncommitted, whoever owns the
        partition next handles them again, and every handler is idempotent. Ending the process
        over it would only turn one rebalance into another.
        """
        try:
            await self.commit(record)
        except KafkaError as exc:
            log.warning("commit of group %s failed (%s); the records will be redelivered",
                        self.group_id, exc.__class__.__name__)
            return False
        return True

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching from these partitions (their records already fetched stay in hand)."""
        self._consumer.pause(*partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.resume(*partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._consumer.paused())

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    @property
    def raw(self) -> AIOKafkaConsumer:
        return self._consumer


def loads(value: bytes | None) -> Any:
    """Decode a JSON message value (orjson)."""
    return orjson.loads(value) if value is not None else None
