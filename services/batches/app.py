"""Mounting the Batches API: `setup_batches(app)` on a shared app, or `create_batches_app` on its own.

`setup_batches` expects an app from `create_service_app` (services/http/service.py): its cleanup
context has opened MongoDB and S3 before this one's runs. This one adds the batch store, the
Kafka producer behind the events outbox, and the model registry's test-model rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from events.bus import Producer
from events.topics import batch_events_topic, ensure_topics
from services.batches.context import BATCHES_KEY, BatchesContext, LimitedModels
from services.batches.handlers import add_batch_routes
from services.batches.models_route import add_model_routes
from services.batches.retry import add_retry_route
from services.http.health import add_health_check
from services.http.metrics import METRICS_KEY
from services.http.service import DB_KEY, OBJECTS_KEY, SETTINGS_KEY, create_service_app
from services.settings import Settings
from services.state.batches import BatchStore
from services.state.files import FileStore
from services.state.outbox import EventPublisher
from services.state.projects import ProjectStore


async def _batches_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    db, objects = app[DB_KEY], app[OBJECTS_KEY]
    # Read the registry first: a broken models file should stop start-up before anything connects.
    limited_models = LimitedModels.from_registry(settings)
    store = BatchStore(db)
    await store.ensure_indexes()
    await ensure_topics(settings, [batch_events_topic(settings)])
    producer = Producer(settings, client_id="offhours-batches")
    await producer.start()
    try:
        app[BATCHES_KEY] = BatchesContext(
            settings=settings,
            store=store,
            files=FileStore(db, objects),
            objects=objects,
            publisher=EventPublisher(store, producer, settings, registry=app[METRICS_KEY].registry),
            limited_models=limited_models,
            projects=ProjectStore(db, settings),
        )
        yield
    finally:
        await producer.stop()


async def _kafka_ping(app: web.Application) -> None:
    # A metadata request is a real round trip to the broker (cached metadata would not be).
    await app[BATCHES_KEY].publisher.producer.raw.client.fetch_all_metadata()


def setup_batches(app: web.Application) -> None:
    """Add `/v1/batches` (with the retry extension), `/v1/models`, the batch store and the events producer to `app`."""
    app.cleanup_ctx.append(_batches_ctx)
    add_health_check(app, "kafka", lambda: _kafka_ping(app))
    add_batch_routes(app)
    add_retry_route(app)
    add_model_routes(app)


def create_batches_app(settings: Settings) -> web.Application:
    """The Batches API alone (the `api` process serves it together with the Files API)."""
    app = create_service_app(settings, title="offhours batches")
    setup_batches(app)
    return app
