"""Fixtures of the end-to-end tests: whole stacks of real processes (tests/e2e/harness.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from infra.launcher import InfraInfo
from services.settings import Settings
from services.stores.s3 import ObjectStore
from tests.conftest import _base_settings
from tests.e2e.harness import GatedUpstream, ServiceStack, fast_settings, write_models_file

MakeStack = Callable[..., Awaitable[ServiceStack]]


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[GatedUpstream]:
    server = await GatedUpstream().start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def make_stack(settings: Settings, tmp_path: Path, upstream: GatedUpstream) -> AsyncIterator[MakeStack]:
    """`await make_stack(workers=[...], **settings_overrides)`: processes stopped after the test."""
    stacks: list[ServiceStack] = []

    async def make(workers: tuple[str, ...] = ("null-model",), chunk_lines: dict[str, int] | None = None,
                   **overrides: Any) -> ServiceStack:
        models = write_models_file(tmp_path / f"models-{len(stacks)}.toml", upstream.url, **(chunk_lines or {}))
        s = fast_settings(settings, models_file=models, **overrides)
        stack = ServiceStack(s, tmp_path / f"logs-{len(stacks)}")
        stacks.append(stack)
        return await stack.start(workers)

    yield make
    for stack in stacks:
        await stack.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def module_settings(infra: InfraInfo, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Like the per-test `settings` (private database, bucket, topic prefix), shared by one module's tests."""
    suffix = uuid.uuid4().hex[:12]
    state = tmp_path_factory.mktemp("e2e")
    s = infra.apply(_base_settings(infra.state_dir)).model_copy(update={
        "mongodb_database": f"m_{suffix}", "s3_bucket": f"m-{suffix}", "topic_prefix": f"m{suffix}", "state_dir": state,
    })
    async with ObjectStore(s) as store:
        await store.ensure_bucket()
    return s
