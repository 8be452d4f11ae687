"""The console's fixtures.

- `console_api`: the real api app (files, batches, webhooks and the console) served in this process
  over the session's Kafka/MongoDB/S3, for the HTTP tests.
- `console_stack` (module): the service as real processes — `offhours api`, the dispatcher, a
  `batch-test-model` worker and the notifier — for the browser tests.
- `browser` (session): headless Chromium from the system's packages (installed when missing, see
  tests/support/browser.py); `page`: a fresh browser context per test, watched for errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from infra.launcher import InfraInfo
from services.api.app import create_api_app
from services.http.auth import ApiKeyStore
from services.runtime.child_process import ServiceProcess
from services.settings import Settings
from services.stores.s3 import ObjectStore
from tests.support.api import Api
from tests.support.browser import Watched, ensure_chromium
from tests.support.models import write_models_file
from tests.support.processes import ServiceStack
from tests.support.servers import serving
from tests.support.settings import fast_settings, isolated_settings


@pytest_asyncio.fixture(loop_scope="session")
async def console_api(settings: Settings) -> AsyncIterator[Api]:
    async with serving(settings, create_api_app, Api) as start:
        yield await start()


@dataclass
class ConsoleStack:
    services: ServiceStack
    notifier: ServiceProcess

    @property
    def url(self) -> str:
        assert self.services.api is not None
        return self.services.api.base_url

    async def key(self, project: str) -> str:
        key, _ = await ApiKeyStore(self.services.db).create(project)
        return key


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console_stack(
    infra: InfraInfo, buckets: ObjectStore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ConsoleStack]:
    tmp = tmp_path_factory.mktemp("console")
    async with isolated_settings(infra, tmp, buckets, prefix="c") as base:
        # Webhook endpoints on loopback (nothing listens there; the console only manages them).
        s = fast_settings(
            base, models_file=write_models_file(tmp / "models.toml", None), webhook_allowlist=["127.0.0.1/32"]
        )
        services = ServiceStack(s, tmp / "logs")
        notifier = ServiceProcess(s, ["notifier"], name="notifier", log_file=tmp / "logs" / "notifier.log")
        try:
            await services.start(workers=("batch-test-model",))
            await notifier.start()
            yield ConsoleStack(services, notifier)
        finally:
            await services.close()
            notifier.stop(15)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    try:
        executable = ensure_chromium()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Watched]:
    context = await browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
    watched = Watched(await context.new_page())
    try:
        yield watched
    finally:
        await context.close()
