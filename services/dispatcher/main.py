"""Process entry of the dispatcher: open MongoDB, S3 and Kafka, serve /healthz + /metrics, run until a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from events.bus import Producer
from services.dispatcher.app import OpsServer, create_ops_app, metrics_registry
from services.dispatcher.service import Dispatcher
from services.files.store import FileStore
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Fewer garbage-collector passes on the per-line hot paths (validation pass, chunk pipeline).

    Each line allocates a few short-lived dicts; with the default thresholds the collector keeps
    re-walking everything alive (the same 15-20 % run-batch measured). Start-up objects (modules,
    an engine's weights) are frozen out of collection: they are never garbage.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT set `stop`: the loops finish the record in hand (uncommitted work is redelivered)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


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
