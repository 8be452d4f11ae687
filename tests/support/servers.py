"""Real aiohttp apps on loopback ports, with the stores a test needs to look behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from pymongo.asynchronous.database import AsyncDatabase

from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore

T = TypeVar("T")
# (base_url, settings, db, objects, http session) -> the test's handle on one server
Wrap = Callable[[str, Settings, AsyncDatabase[Any], ObjectStore, aiohttp.ClientSession], T]


@asynccontextmanager
async def serving(
    settings: Settings, app_factory: Callable[[Settings], web.Application], wrap: Wrap[T]
) -> AsyncIterator[Callable[..., Awaitable[T]]]:
    """Yields `start(**settings_overrides)`, which serves a new app and returns `wrap(...)` of it;
    every server and store is closed on exit."""
    servers: list[TestServer] = []
    db = open_database(settings)
    objects = await ObjectStore(settings).open()
    http = aiohttp.ClientSession()

    async def start(**overrides: Any) -> T:
        s = settings.model_copy(update=overrides)
        server = TestServer(app_factory(s), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return wrap(str(server.make_url("")).rstrip("/"), s, db, objects, http)

    try:
        yield start
    finally:
        for server in servers:
            await server.close()
        await http.close()
        await objects.close()
        await close_database(db)


async def serve_on_loopback(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free loopback port: its runner (stop it with `runner.cleanup()`) and base URL.

    The loopback upstreams, inputs and receivers of the tests are all served this way.
    """
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
