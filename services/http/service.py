"""The base every offhours HTTP app is built on: middlewares, shared resources, and the
operational routes (`/healthz`, `/metrics`, `/openapi.json`).

`create_service_app(settings, title=...)` gives an app with the conventions installed; services
mount their routes on it with their own `setup_*(app)` (services/files/app.py), so the files and
batches APIs can share one port (services/api) or run as separate processes.

Shared resources are opened once per app in `cleanup_ctx` and closed on shutdown:
`app[DB_KEY]` (MongoDB database), `app[OBJECTS_KEY]` (the S3 bucket), `app[API_KEY_STORE_KEY]`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase

from services.http.auth import API_KEY_STORE_KEY, ApiKeyStore, auth_middleware
from services.http.errors import error_middleware
from services.http.health import add_health_check, health_handler
from services.http.logging_setup import JsonAccessLogger
from services.http.metrics import metrics_handler, setup_metrics
from services.http.openapi import OPENAPI_KEY, OpenAPIInfo, openapi_handler
from services.http.request_id import setup_request_id
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore

SETTINGS_KEY = web.AppKey("settings", Settings)
DB_KEY = web.AppKey("db", AsyncDatabase[Any])
OBJECTS_KEY = web.AppKey("objects", ObjectStore)

log = logging.getLogger(__name__)

# JSON request bodies (batch create and the like) are small; uploads stream and are not bound by it.
JSON_BODY_LIMIT = 1024 * 1024


def package_version() -> str:
    try:
        return version("offhours")
    except PackageNotFoundError:
        return "0.0.0"


async def _shared_resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    db = open_database(settings)
    objects = await ObjectStore(settings).open()
    try:
        await objects.ensure_bucket()
        keys = ApiKeyStore(db)
        await keys.ensure_indexes()
        app[DB_KEY] = db
        app[OBJECTS_KEY] = objects
        app[API_KEY_STORE_KEY] = keys
        yield
    finally:
        await objects.close()
        await close_database(db)


def create_service_app(settings: Settings, *, title: str, description: str = "") -> web.Application:
    """An app with offhours' HTTP conventions; mount services on it with their `setup_*`."""
    app = web.Application(client_max_size=JSON_BODY_LIMIT)
    app[SETTINGS_KEY] = settings
    app[OPENAPI_KEY] = OpenAPIInfo(title=title, version=package_version(), description=description)
    # Outermost first: the request id exists before anything can fail; metrics see the status the
    # error middleware chose; auth runs innermost so its 401 is shaped like every other error.
    setup_request_id(app)
    setup_metrics(app)
    app.middlewares.append(error_middleware)
    app.middlewares.append(auth_middleware)

    app.cleanup_ctx.append(_shared_resources)
    add_health_check(app, "mongo", lambda: app[DB_KEY].command("ping"))
    add_health_check(app, "s3", lambda: app[OBJECTS_KEY].client.head_bucket(Bucket=app[OBJECTS_KEY].bucket))

    app.router.add_get("/healthz", health_handler, allow_head=False)
    app.router.add_get("/metrics", metrics_handler, allow_head=False)
    app.router.add_get("/openapi.json", openapi_handler, allow_head=False)
    return app


def serve(app: web.Application, *, host: str, port: int) -> None:
    """Run `app` until SIGINT/SIGTERM, with structured access logs (configure logging first).

    Port 0 binds any free port; the address actually bound is logged once the app listens.
    """
    web.run_app(app, host=host, port=port, access_log_class=JsonAccessLogger, print=_log_listening)


def _log_listening(message: str) -> None:
    # run_app's banner, "======== Running on http://HOST:PORT ======== ...": its sites' names carry the
    # bound port, also when 0 was asked for.
    log.info("%s", message.splitlines()[0].strip("= "))
