"""Settings for tests: the session's servers, and a database, bucket and topic prefix of one's own.

`isolated_settings` is what keeps tests on one set of servers from seeing each other's data; the
`settings` fixture (tests/conftest.py) gives one per test, module-scoped fixtures one per module.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from infra.launcher import InfraInfo
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore


def base_settings(state_dir: Path) -> Settings:
    # Explicit values win over any OFFHOURS_*/KAFKA_*/... variables in the developer's shell.
    return Settings(
        state_dir=state_dir,
        s3_access_key_id="offhours-test",
        s3_secret_access_key="offhours-test-secret",
        s3_region="us-east-1",
        s3_bucket="offhours-test",
        log_json=False,
        # Tests serve input files from loopback servers; tests of the input URL guard turn this off.
        input_url_allow_private=True,
    )


@contextlib.asynccontextmanager
async def session_object_store(infra: InfraInfo) -> AsyncIterator[ObjectStore]:
    """One S3 client for the session's bookkeeping (creating each test's bucket): opening a client
    costs ~0.1 s, which hundreds of tests would otherwise pay once more each."""
    async with ObjectStore(infra.apply(base_settings(infra.state_dir))) as store:
        yield store


@contextlib.asynccontextmanager
async def isolated_settings(
    infra: InfraInfo, state_dir: Path, buckets: ObjectStore, *, prefix: str = "t"
) -> AsyncIterator[Settings]:
    """Settings on the session's servers with a private database, bucket and topic prefix. The bucket
    is created with `buckets` (see session_object_store); the database is dropped on exit, so one long
    session does not pile up hundreds of them."""
    suffix = uuid.uuid4().hex[:12]
    s = infra.apply(base_settings(infra.state_dir)).model_copy(
        update={
            "mongodb_database": f"{prefix}_{suffix}",
            "s3_bucket": f"{prefix}-{suffix}",  # S3 bucket names: lowercase, digits, hyphens
            "topic_prefix": f"{prefix}{suffix}",
            "state_dir": state_dir,
        }
    )
    await buckets.client.create_bucket(Bucket=s.s3_bucket)  # a new name: nothing to be idempotent about
    try:
        yield s
    finally:
        db = open_database(s)
        try:
            await db.client.drop_database(s.mongodb_database)
        except Exception:  # cleanup is best effort; the tmp state dir goes away anyway
            pass
        finally:
            await close_database(db)


def fast_settings(settings: Settings, **overrides: Any) -> Settings:
    """Short production timers, so tests do not wait on them (none of them is asserted on)."""
    values: dict[str, Any] = {
        "sweep_interval_seconds": 0.3, "progress_interval_seconds": 0.2, "outbox_stale_seconds": 1.0,
        "worker_heartbeat_interval_seconds": 1.0, "kafka_session_timeout_seconds": 6.0,
        "worker_shutdown_grace_seconds": 5.0, "log_json": False,
    }
    values.update(overrides)
    return settings.model_copy(update=values)
