"""The Files API served in-process on a loopback port, over the session's real MongoDB and S3.

`files_api` serves `create_files_app(settings)`; `make_files_api(**overrides)` serves one with
changed settings (a lowered size limit, a fast sweeper). Tests that must kill the server use
services.api.process.ApiProcess instead (test_files_process.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp.test_utils import TestServer
from files_harness import FilesApi, MakeFilesApi

from services.files.app import create_files_app
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore


@pytest_asyncio.fixture(loop_scope="session")
async def make_files_api(settings: Settings) -> AsyncIterator[MakeFilesApi]:
    servers: list[TestServer] = []
    db = open_database(settings)
    objects = await ObjectStore(settings).open()
    http = aiohttp.ClientSession()

    async def start(**overrides: Any) -> FilesApi:
        s = settings.model_copy(update=overrides)
        server = TestServer(create_files_app(s), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return FilesApi(str(server.make_url("")).rstrip("/"), s, db, objects, http)

    try:
        yield start
    finally:
        for server in servers:
            await server.close()
        await http.close()
        await objects.close()
        await close_database(db)


@pytest_asyncio.fixture(loop_scope="session")
async def files_api(make_files_api: MakeFilesApi) -> FilesApi:
    return await make_files_api()
