"""Mounting the Files API: `setup_files(app)` on a shared app, or `create_files_app` on its own.

`setup_files` expects an app from `create_service_app` (services/http/service.py), whose
cleanup context has opened MongoDB and S3 before this one's runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.files.routes import FILE_STORE_KEY, add_routes
from services.files.sweeper import sweeper_ctx
from services.http.service import DB_KEY, OBJECTS_KEY, SETTINGS_KEY, create_service_app
from services.settings import Settings
from services.state.files import FileStore


async def _file_store(app: web.Application) -> AsyncIterator[None]:
    store = FileStore(app[DB_KEY], app[OBJECTS_KEY])
    await store.ensure_indexes()
    app[FILE_STORE_KEY] = store
    yield


def setup_files(app: web.Application) -> None:
    """Add the `/v1/files` routes, the file store and the sweeper to `app`."""
    app.cleanup_ctx.append(_file_store)
    app.cleanup_ctx.append(sweeper_ctx(FILE_STORE_KEY, SETTINGS_KEY))
    add_routes(app)


def create_files_app(settings: Settings) -> web.Application:
    """The Files API alone (the `api` process serves it together with the Batches API)."""
    app = create_service_app(settings, title="offhours files")
    setup_files(app)
    return app
