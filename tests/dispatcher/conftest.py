"""Fixtures of the dispatcher tests: the in-process stack of tests/dispatcher/harness.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from services.settings import Settings
from tests.dispatcher.harness import Stack, open_stack


@pytest_asyncio.fixture(loop_scope="session")
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    async with open_stack(settings) as st:
        yield st
