"""Fixtures of the end-to-end tests (whole stacks of real processes; `make_stack` and `upstream` are in
tests/conftest.py, shared with the notifier's whole-service test). Every test here is marked `e2e`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from infra.launcher import InfraInfo
from services.settings import Settings
from services.stores.s3 import ObjectStore
from tests.support.settings import isolated_settings


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def module_settings(
    infra: InfraInfo, buckets: ObjectStore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Settings]:
    """Like the per-test `settings` (private database, bucket, topic prefix), shared by one module's tests."""
    async with isolated_settings(infra, tmp_path_factory.mktemp("e2e"), buckets, prefix="m") as s:
        yield s


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory `e2e` (the fast tier, `-m "not e2e and not slow"`, skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)
