"""Kafka topic names and topic creation.

Names are `{settings.topic_prefix}.<role>` so several deployments or test runs can share one
broker. Roles (docs/architecture.md, "Topics and consumer groups"):
- `batch.events`  — CloudEvents about batches (key = batch id, so one batch's events stay ordered);
- `work.<model>`  — work chunks for one model; one consumer group of workers per model;
- `work.results`  — workers report finished chunks back to the dispatcher.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from services.settings import Settings

log = logging.getLogger(__name__)

# Kafka's legal topic characters; anything else in a model name ("org/model:tag") is replaced.
_ILLEGAL = re.compile(r"[^a-zA-Z0-9._-]")
_MAX_TOPIC_LEN = 249
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


def batch_events_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.batch.events"


def work_results_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.work.results"


def sanitize_topic_component(name: str) -> str:
    """A model name made safe for a topic name.

    Illegal characters become "_". Because that mapping is lossy ("a/b" and "a_b" would collide
    and silently share a work topic), a short hash of the original name is appended whenever
    anything had to change. Names that are already legal are kept verbatim, so operators see
    `offhours.work.smollm2-135m` for ordinary model names.
    """
    if not name:
        raise ValueError("empty model name")
    safe = _ILLEGAL.sub("_", name)
    if safe != name:
        safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def work_topic(settings: Settings, model: str) -> str:
    topic = f"{settings.topic_prefix}.work.{sanitize_topic_component(model)}"
    if len(topic) > _MAX_TOPIC_LEN:
        digest = hashlib.sha1(model.encode()).hexdigest()[:8]
        topic = f"{topic[: _MAX_TOPIC_LEN - 9]}-{digest}"
    return topic


async def ensure_topics(
    settings: Settings, names: Iterable[str], partitions: int = 4, replication_factor: int = 1
) -> None:
    """Create the topics that do not exist yet; existing ones are left unchanged (idempotent).

    Topics are created explicitly instead of relying on broker auto-creation, because auto-created
    topics get the broker's default partition count, and the partition count bounds how many
    workers of one model can consume in parallel.
    replication_factor 1 suits the local broker; production passes its own (typically 3).
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if not missing:
            return
        new = [
            NewTopic(name=n, num_partitions=partitions, replication_factor=replication_factor)
            for n in missing
        ]
        try:
            resp = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return  # another process won the race; that is fine
        # aiokafka returns per-topic error codes instead of raising for each one.
        for topic_error in getattr(resp, "topic_errors", []) or []:
            topic, code = topic_error[0], topic_error[1]
            if code in (0, _TOPIC_ALREADY_EXISTS):
                continue
            message = topic_error[2] if len(topic_error) > 2 else ""
            raise for_code(code)(f"creating topic {topic}: {message}")
        log.info("created topics %s (partitions=%d)", missing, partitions)
    finally:
        await admin.close()
