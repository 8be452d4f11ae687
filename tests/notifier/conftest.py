"""Fixtures of the notifier tests, all on the session's real servers (tests/conftest.py) over loopback.

- `wh_settings`: the test's `settings` with the loopback allowlist and short retry timings.
- `make_receiver()`: a real aiohttp server on 127.0.0.1 that records every POST; its answers are
  programmable (`receiver.answers = [500, 500, 200]`, `receiver.hang = True`).
- `make_api(**overrides)` / `api`: the public API app (files + batches + webhooks) on a loopback port.
- `start_notifier(**overrides)`: the notifier loops in-process (stopped at teardown).
- `batches`: drives batches through their statuses with the real BatchStore and outbox publisher,
  so the events on the topic are exactly what the batches service and dispatcher publish.

The handles are in tests/support/ (notifier.py, api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase

from services.api.app import create_api_app
from services.notifier.service import Notifier
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from tests.support.api import Api, MakeApi
from tests.support.notifier import (
    WEBHOOK_TEST_SETTINGS,
    Batches,
    MakeReceiver,
    StartNotifier,
    open_batches,
    serving_receivers,
)
from tests.support.servers import serving


@pytest_asyncio.fixture(loop_scope="session")
async def make_receiver() -> AsyncIterator[MakeReceiver]:
    async with serving_receivers() as start:
        yield start


@pytest_asyncio.fixture(loop_scope="session")
async def wh_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=WEBHOOK_TEST_SETTINGS)


@pytest_asyncio.fixture(loop_scope="session")
async def make_api(wh_settings: Settings) -> AsyncIterator[MakeApi]:
    async with serving(wh_settings, create_api_app, Api) as start:
        yield start


@pytest_asyncio.fixture(loop_scope="session")
async def api(make_api: MakeApi) -> Api:
    return await make_api()


@pytest_asyncio.fixture(loop_scope="session")
async def start_notifier(wh_settings: Settings) -> AsyncIterator[StartNotifier]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    dbs: list[AsyncDatabase[Any]] = []

    async def start(**overrides: Any) -> Notifier:
        s = wh_settings.model_copy(update=overrides)
        db = open_database(s)
        dbs.append(db)
        notifier = Notifier(s, db)
        await notifier.prepare()
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(notifier.run(stop))))
        return notifier

    try:
        yield start
    finally:
        for stop, _ in running:
            stop.set()
        for _, task in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        for db in dbs:
            await close_database(db)


@pytest_asyncio.fixture(loop_scope="session")
async def batches(wh_settings: Settings) -> AsyncIterator[Batches]:
    async with open_batches(wh_settings) as driver:
        yield driver
