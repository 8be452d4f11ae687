"""The api process (files + batches) on a loopback port, over the session's real servers.

`api` serves `create_api_app(settings)` (one per module, on its own database, bucket and topic
prefix); `make_api(**overrides)` serves one with changed settings for a single test.
Each test gets API keys for fresh projects from `api.key(project)` and talks to the server with
the official `openai` SDK (`api.client(key)`) or plain HTTP (`api.http`); see tests/support/api.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from infra.launcher import InfraInfo
from services.api.app import create_api_app
from services.settings import Settings
from services.stores.s3 import ObjectStore
from tests.support.api import Api, MakeApi
from tests.support.servers import serving
from tests.support.settings import isolated_settings


@pytest_asyncio.fixture(loop_scope="session")
async def make_api(settings: Settings) -> AsyncIterator[MakeApi]:
    """Starts an api server with settings changed by keyword (e.g. a short batch window)."""
    async with serving(settings, create_api_app, Api) as start:
        yield start


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(
    infra: InfraInfo, buckets: ObjectStore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    """One server per test module (start-up costs about a second); tests isolate by project."""
    async with isolated_settings(infra, tmp_path_factory.mktemp("batches-api"), buckets) as s, \
            serving(s, create_api_app, Api) as start:
        yield await start()
