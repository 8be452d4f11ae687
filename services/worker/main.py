"""Process entry of a worker: load the model's engine, join its work topic's group, heartbeat, serve ops."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.inference.registry import get_model
from services.runtime.backends import open_backends
from services.runtime.ops import OpsServer, metrics_registry
from services.runtime.process import install_stop_signals, tune_gc
from services.settings import Settings
from services.worker.app import create_worker_app
from services.worker.heartbeat import Heartbeat, new_worker_id
from services.worker.service import Worker

log = logging.getLogger(__name__)


async def run_worker(
    settings: Settings, model: str, *, concurrency: int | None = None, metrics_port: int | None = None
) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    spec = get_model(model, settings.models_file)
    concurrency = concurrency or settings.worker_concurrency
    engine = spec.create_engine(**({"max_concurrency": concurrency} if concurrency else {}))
    log.info("loading %s (%s engine)", model, spec.engine)
    await engine.start()
    worker_id = new_worker_id()
    try:
        async with open_backends(settings, client_id=f"offhours-worker.{model}") as backends:
            heartbeat = Heartbeat(backends.db, worker_id=worker_id, model=model, endpoints=engine.endpoints,
                                  interval_s=settings.worker_heartbeat_interval_seconds, stats=lambda: worker.stats())
            ops = create_worker_app(heartbeat, backends)
            worker = Worker(settings, engine, db=backends.db, store=backends.store, producer=backends.producer,
                            worker_id=worker_id, concurrency=concurrency, registry=metrics_registry(ops))
            await worker.prepare()
            tune_gc()
            port = settings.worker_metrics_port if metrics_port is None else metrics_port
            async with OpsServer(ops, settings.host, port):
                beating = asyncio.create_task(heartbeat.run(stop), name="heartbeat")
                try:
                    # The first beat before the first chunk: the dispatcher accepts batches of served models only.
                    await heartbeat.beat()
                    log.info("worker %s serving %s (endpoints %s)", worker_id, model,
                             ", ".join(sorted(engine.endpoints)))
                    await worker.run(stop)
                finally:
                    stop.set()
                    beating.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beating
                    await heartbeat.remove()
    finally:
        await engine.close()
    log.info("worker %s stopped", worker_id)
    return 0
