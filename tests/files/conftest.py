"""The Files API served in-process on a loopback port, over the session's real MongoDB and S3.

`files_api` serves `create_files_app(settings)`; `make_files_api(**overrides)` serves one with
changed settings (a lowered size limit, a fast sweeper). Tests that must kill the server use
services.api.process.ApiProcess instead (test_files_process.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from services.files.app import create_files_app
from services.settings import Settings
from tests.support.files import FilesApi, MakeFilesApi
from tests.support.servers import serving


@pytest_asyncio.fixture(loop_scope="session")
async def make_files_api(settings: Settings) -> AsyncIterator[MakeFilesApi]:
    async with serving(settings, create_files_app, FilesApi) as start:
        yield start


@pytest_asyncio.fixture(loop_scope="session")
async def files_api(make_files_api: MakeFilesApi) -> FilesApi:
    return await make_files_api()
