"""The notifier process as an aiohttp app: the delivery loops in `cleanup_ctx`, plus `/healthz` and `/metrics`.

The HTTP side is operational only (no `/v1` routes): the webhook endpoints API is mounted on the
public API app (routes.py). `/healthz` is 503 when MongoDB does not answer or the delivery loops
have stopped; a loop that dies takes the process down (SIGTERM to itself), so a supervisor
restarts it rather than leaving a process that answers health checks and delivers nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.http.health import add_health_check, health_handler
from services.notifier.service import Notifier
from services.settings import Settings
from services.stores.mongo import close_database, open_database

log = logging.getLogger(__name__)

NOTIFIER_SETTINGS_KEY = web.AppKey("notifier_settings", Settings)
NOTIFIER_KEY = web.AppKey("notifier", Notifier)
NOTIFIER_TASK_KEY = web.AppKey("notifier_task", asyncio.Task[None])
REGISTRY_KEY = web.AppKey("notifier_registry", CollectorRegistry)


async def _notifier(app: web.Application) -> AsyncIterator[None]:
    settings = app[NOTIFIER_SETTINGS_KEY]
    db = open_database(settings)
    try:
        notifier = Notifier(settings, db, registry=app[REGISTRY_KEY])
        await notifier.prepare()
        app[NOTIFIER_KEY] = notifier
        stop = asyncio.Event()
        task = asyncio.create_task(notifier.run(stop), name="notifier")
        task.add_done_callback(_exit_if_failed)
        app[NOTIFIER_TASK_KEY] = task
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await close_database(db)


def _exit_if_failed(task: asyncio.Task[None]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.error("the notifier loops stopped", exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)  # web.run_app turns this into a graceful shutdown


async def _loops_alive(app: web.Application) -> None:
    task = app.get(NOTIFIER_TASK_KEY)
    if task is None or task.done():
        raise RuntimeError("the delivery loops are not running")


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[REGISTRY_KEY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_notifier_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[NOTIFIER_SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = CollectorRegistry()
    app.cleanup_ctx.append(_notifier)
    add_health_check(app, "mongo", lambda: app[NOTIFIER_KEY].db.command("ping"))
    add_health_check(app, "loops", lambda: _loops_alive(app))
    app.router.add_get("/healthz", health_handler, allow_head=False)
    app.router.add_get("/metrics", metrics_handler, allow_head=False)
    return app
