"""MongoDB access through PyMongo's native async API (`AsyncMongoClient`).

Motor, the older async driver, reached end of life in May 2026; PyMongo's async API is its
successor and needs no thread pool. One client per process: it is a connection pool, cheap to
share and costly to create, so services open it at start-up and close it on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from services.settings import Settings

log = logging.getLogger(__name__)

Document = dict[str, object]


def open_database(settings: Settings, **client_options: object) -> AsyncDatabase[Document]:
    """The settings' database on a new client. The client connects lazily on first use.

    tz_aware: datetimes come back as aware UTC values, so they compare with `datetime.now(UTC)`.
    """
    options: dict[str, object] = {
        "tz_aware": True,
        "serverSelectionTimeoutMS": 10_000,
        "appname": "offhours",
    }
    options.update(client_options)
    client: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongodb_uri, **options)
    return client.get_database(settings.mongodb_database)


async def close_database(db: AsyncDatabase[Document]) -> None:
    """Close the client behind `db` (and every other database handle sharing it)."""
    await db.client.close()


async def ensure_indexes(db: AsyncDatabase[Document], indexes: Mapping[str, Sequence[IndexModel]]) -> None:
    """Create the given indexes per collection; idempotent, so every process may call it at start-up.

    Example: `await ensure_indexes(db, {"batches": [IndexModel([("project", 1), ("created_at", -1)])]})`.
    """
    for collection, models in indexes.items():
        if models:
            names = await db[collection].create_indexes(list(models))
            log.debug("indexes on %s: %s", collection, names)
