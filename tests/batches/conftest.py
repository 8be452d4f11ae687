"""The api process (files + batches) on a loopback port, over the session's real servers.

`api` serves `create_api_app(settings)` (one per module, on its own database, bucket and topic
prefix); `make_api(**overrides)` serves one with changed settings for a single test.
Each test gets API keys for fresh projects from `api.key(project)` and talks to the server with
the official `openai` SDK (`api.client(key)`) or plain HTTP (`api.http`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
import pytest_asyncio
from batch_helpers import Api, MakeApi

from infra.launcher import InfraInfo
from services.api.app import create_api_app
from services.settings import Settings
from tests.app_servers import serving


def _serving(settings: Settings) -> AbstractAsyncContextManager[MakeApi]:
    return serving(settings, create_api_app, Api)


@pytest_asyncio.fixture(loop_scope="session")
async def make_api(settings: Settings) -> AsyncIterator[MakeApi]:
    """Starts an api server with settings changed by keyword (e.g. a short batch window)."""
    async with _serving(settings) as start:
        yield start


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(infra: InfraInfo, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """One server per test module (start-up costs about a second); tests isolate by project."""
    suffix = uuid.uuid4().hex[:12]
    settings = infra.apply(Settings(
        s3_access_key_id="offhours-test", s3_secret_access_key="offhours-test-secret", log_json=False,
    )).model_copy(update={
        "mongodb_database": f"t_{suffix}",
        "s3_bucket": f"t-{suffix}",
        "topic_prefix": f"t{suffix}",
        "state_dir": tmp_path_factory.mktemp("batches-api"),
    })
    async with _serving(settings) as start:
        api = await start()
        try:
            yield api
        finally:
            await api.db.client.drop_database(settings.mongodb_database)
