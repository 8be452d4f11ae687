"""The three backends a background process holds for its whole life: MongoDB, S3 and a Kafka producer.

One place opens them in the right order and closes them in the reverse one, whatever fails in
between, and names the health checks an orchestrator probes them by. The dispatcher and the
workers run inside `open_backends`; the API opens the same backends in its app's cleanup context.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Producer
from services.http.health import HealthCheck
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore


@dataclass(frozen=True)
class Backends:
    db: AsyncDatabase[Any]
    store: ObjectStore
    producer: Producer

    def health_checks(self) -> dict[str, HealthCheck]:
        """`/healthz` checks that make a real round trip to MongoDB and S3.

        `/healthz` names the one that fails; why (hosts, addresses) goes only to the log.
        """
        return {
            "mongo": lambda: self.db.command("ping"),
            "s3": lambda: self.store.client.head_bucket(Bucket=self.store.bucket),
        }


@contextlib.asynccontextmanager
async def open_backends(settings: Settings, client_id: str) -> AsyncIterator[Backends]:
    """MongoDB (connects lazily), S3 (the bucket made if missing) and a started producer."""
    db = open_database(settings)
    store = await ObjectStore(settings).open()
    producer = Producer(settings, client_id=client_id)
    try:
        await store.ensure_bucket()
        await producer.start()
        yield Backends(db, store, producer)
    finally:
        await producer.stop()
        await store.close()
        await close_database(db)
