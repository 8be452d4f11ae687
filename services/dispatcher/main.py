"""Process entry of the dispatcher: open MongoDB, S3 and Kafka, serve /healthz + /metrics, run until a signal."""

from __future__ import annotations

import asyncio
import logging

from services.dispatcher.service import Dispatcher
from services.runtime.backends import open_backends
from services.runtime.ops import OpsServer, create_ops_app, metrics_registry
from services.runtime.process import install_stop_signals, tune_gc
from services.settings import Settings
from services.state.files import FileStore

log = logging.getLogger(__name__)


async def run_dispatcher(settings: Settings, *, metrics_port: int | None = None) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    async with open_backends(settings, client_id="offhours-dispatcher") as backends:
        ops = create_ops_app(backends.health_checks())
        files = FileStore(backends.db, backends.store)
        await files.ensure_indexes()
        dispatcher = Dispatcher(settings, db=backends.db, store=backends.store, producer=backends.producer,
                                files=files, registry=metrics_registry(ops))
        await dispatcher.prepare()
        tune_gc()
        port = settings.dispatcher_metrics_port if metrics_port is None else metrics_port
        async with OpsServer(ops, settings.host, port):
            log.info("dispatcher running (topic prefix %r)", settings.topic_prefix)
            await dispatcher.run(stop)
    log.info("dispatcher stopped")
    return 0
