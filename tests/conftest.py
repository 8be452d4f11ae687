"""Shared fixtures: one real Kafka/MongoDB/S3 stack per test session, isolated settings per test.

- `infra` (session): starts Tansu, SecantusDB and rclone once, on free loopback ports, with a
  temporary state folder, via infra.launcher; stopped at the end of the session. Only tests that
  (indirectly) request it start servers — SecantusDB alone takes ~2 s to start.
- `settings` (function): a Settings pointing at those servers, with a database, bucket and topic
  prefix unique to the test, so tests never see each other's data; the bucket already exists.

Everything runs on the session event loop (pyproject: asyncio_default_*_loop_scope = "session"),
because the session-scoped `infra` fixture must outlive every test's loop.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from infra.launcher import InfraInfo, Launcher, Ports
from services.settings import Settings
from services.stores.s3 import ObjectStore


def _base_settings(state_dir: Path) -> Settings:
    # Explicit values win over any OFFHOURS_*/KAFKA_*/... variables in the developer's shell.
    return Settings(
        state_dir=state_dir,
        s3_access_key_id="offhours-test",
        s3_secret_access_key="offhours-test-secret",
        s3_region="us-east-1",
        s3_bucket="offhours-test",
        log_json=False,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def infra(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InfraInfo]:
    """The session's Kafka/MongoDB/S3 servers (started once, stopped at the end)."""
    state_dir = tmp_path_factory.mktemp("offhours-infra")
    launcher = Launcher(
        _base_settings(state_dir), state_dir=state_dir, ports=Ports.free(), startup_timeout=90
    )
    info = await launcher.up()
    try:
        yield info
    finally:
        await launcher.down()


@pytest_asyncio.fixture(loop_scope="session")
async def settings(infra: InfraInfo, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: session servers, private database / bucket / topic prefix."""
    suffix = uuid.uuid4().hex[:12]
    s = infra.apply(_base_settings(infra.state_dir)).model_copy(
        update={
            "mongodb_database": f"t_{suffix}",
            "s3_bucket": f"t-{suffix}",  # S3 bucket names: lowercase, digits, hyphens
            "topic_prefix": f"t{suffix}",
            "state_dir": tmp_path,
        }
    )
    async with ObjectStore(s) as store:
        await store.ensure_bucket()
    yield s
    # Drop the test's database so one long session does not accumulate hundreds of them.
    from services.stores.mongo import close_database, open_database

    db = open_database(s)
    try:
        await db.client.drop_database(s.mongodb_database)
    except Exception:  # cleanup is best effort; the tmp state dir goes away anyway
        pass
    finally:
        await close_database(db)
