"""Shared fixtures: one real Kafka/MongoDB/S3 stack per test session, isolated settings per test.

- `infra` (session): starts Tansu, SecantusDB and rclone once, on free loopback ports, with a
  temporary state folder, via infra.launcher; stopped at the end of the session. Only tests that
  (indirectly) request it start servers — SecantusDB alone takes ~2 s to start.
- `settings` (function): a Settings pointing at those servers, with a database, bucket and topic
  prefix unique to the test, so tests never see each other's data; the bucket already exists
  (created through `buckets`, the session's one S3 client for that).
- `stack` (function): a dispatcher and workers in this process on those servers (tests/support/stack.py).
- `upstream`, `make_stack(workers=..., **settings)`: the service as real processes, with a chat
  upstream the test releases request by request (tests/support/processes.py, upstream.py).

Everything runs on the session event loop (pyproject: asyncio_default_*_loop_scope = "session"),
because the session-scoped `infra` fixture must outlive every test's loop. Helpers are in
tests/support/; this file holds fixtures only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from infra.launcher import InfraInfo, Launcher, Ports
from services.settings import Settings
from services.stores.s3 import ObjectStore
from tests.support.models import write_models_file
from tests.support.processes import MakeStack, ServiceStack
from tests.support.settings import base_settings, fast_settings, isolated_settings, session_object_store
from tests.support.stack import Stack, open_stack
from tests.support.upstream import GatedUpstream


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def infra(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InfraInfo]:
    """The session's Kafka/MongoDB/S3 servers (started once, stopped at the end)."""
    state_dir = tmp_path_factory.mktemp("offhours-infra")
    launcher = Launcher(base_settings(state_dir), state_dir=state_dir, ports=Ports.free(), startup_timeout=90)
    info = await launcher.up()
    try:
        yield info
    finally:
        await launcher.down()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def buckets(infra: InfraInfo) -> AsyncIterator[ObjectStore]:
    """The S3 client that creates each test's bucket."""
    async with session_object_store(infra) as store:
        yield store


@pytest_asyncio.fixture(loop_scope="session")
async def settings(infra: InfraInfo, buckets: ObjectStore, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: session servers, private database / bucket / topic prefix."""
    async with isolated_settings(infra, tmp_path, buckets) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="session")
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    async with open_stack(settings) as st:
        yield st


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[GatedUpstream]:
    server = await GatedUpstream().start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def make_stack(settings: Settings, tmp_path: Path, upstream: GatedUpstream) -> AsyncIterator[MakeStack]:
    """`await make_stack(workers=[...], chunk_lines={...}, **settings_overrides)`: processes stopped after the test."""
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
