"""Process entry of the dispatcher: open MongoDB, S3 and Kafka, serve /healthz + /metrics, run until a signal."""

from __future__ import annotations

import asyncio
import logging

from events.bus import Producer
from services.dispatcher.service import Dispatcher
from services.runtime.ops import OpsServer, create_ops_app, metrics_registry
from services.runtime.process import install_stop_signals, tune_gc
from services.settings import Settings
from services.state.files import FileStore
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore

log = logging.getLogger(__name__)


async def run_dispatcher(settings: Settings, *, metrics_port: int | None = None) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    db = open_database(settings)
    store = await ObjectStore(settings).open()
    producer = Producer(settings, client_id="offhours-dispatcher")
    try:
        await store.ensure_bucket()
        await producer.start()
        ops = create_ops_app({
            "mongo": lambda: db.command("ping"),
            "s3": lambda: store.client.head_bucket(Bucket=store.bucket),
        })
        files = FileStore(db, store)
        await files.ensure_indexes()
        dispatcher = Dispatcher(settings, db=db, store=store, producer=producer, files=files,
                                registry=metrics_registry(ops))
        await dispatcher.prepare()
        tune_gc()
        port = settings.dispatcher_metrics_port if metrics_port is None else metrics_port
        server = OpsServer(ops, settings.host, port)
        await server.start()
        try:
            log.info("dispatcher running (topic prefix %r)", settings.topic_prefix)
            await dispatcher.run(stop)
        finally:
            await server.stop()
    finally:
        await producer.stop()
        await store.close()
        await close_database(db)
    log.info("dispatcher stopped")
    return 0
