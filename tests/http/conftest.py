"""Serves the convention test app (tests/support/http_app.py) on loopback over the session's real
MongoDB and S3."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from aiohttp.test_utils import TestServer

from services.http.logging_setup import JsonAccessLogger
from services.settings import Settings
from tests.support.http_app import Served, build_app


@pytest_asyncio.fixture(loop_scope="session")
async def served(settings: Settings) -> AsyncIterator[Served]:
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(access_log_class=JsonAccessLogger)
    async with aiohttp.ClientSession() as http:
        yield Served(str(server.make_url("")).rstrip("/"), app, http)
    await server.close()
