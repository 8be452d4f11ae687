"""Project settings in MongoDB: the `offhours projects` command round trip, defaults, the TTL cache,
and the quota arithmetic the batches service calls at create."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest_asyncio

from services.runtime.child_process import settings_env
from services.settings import Settings
from services.state.batches import BatchStore, new_batch_document
from services.state.projects import ProjectStore
from services.stores.mongo import close_database, open_database


def offhours(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFHOURS_", "AWS_", "S3_", "MONGODB_"))}
    env.update(settings_env(settings))
    return subprocess.run([sys.executable, "-m", "services.cli.main", "projects", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest_asyncio.fixture(loop_scope="session")
async def db(settings: Settings) -> AsyncIterator[object]:
    database = open_database(settings)
    yield database
    await close_database(database)


async def test_the_projects_command_round_trip(settings: Settings, db: object) -> None:
    done = offhours(settings, "set", "team-a", "--weight", "2", "--max-priority", "high",
                    "--max-enqueued", "200000", "--max-running", "10")
    assert done.returncode == 0, done.stderr
    assert "team-a: weight 2, max-priority high, max-enqueued 200000, max-running 10" in done.stdout

    shown = offhours(settings, "show", "team-a")
    assert shown.returncode == 0 and shown.stdout == done.stdout
    other = offhours(settings, "show", "team-b")  # no settings of its own: the defaults, marked so
    assert other.stdout.strip() == (f"team-b: weight 1 (default), max-priority normal (default), max-enqueued "
                                    f"no limit (default), max-running {settings.project_max_running_batches} (default)")
    assert offhours(settings, "set", "team-a", "--weight", "3").returncode == 0  # the rest stays
    listed = offhours(settings, "list")
    assert listed.stdout.splitlines() == ["team-a: weight 3, max-priority high, max-enqueued 200000, max-running 10"]

    store = ProjectStore(db, settings)  # type: ignore[arg-type]
    got = await store.get("team-a")
    assert (got.weight, got.max_priority, got.max_enqueued, got.max_running) == (3.0, "high", 200_000, 10)

    bad = offhours(settings, "set", "team-a", "--max-priority", "urgent")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert offhours(settings, "set", "team-a", "--weight", "0").returncode == 2
    assert offhours(settings, "set", "bad name!", "--weight", "1").returncode == 2
    assert offhours(settings, "set", "team-a").returncode == 2  # nothing to set


async def test_settings_are_read_again_after_their_ttl(settings: Settings, db: object) -> None:
    reader = ProjectStore(db, settings.model_copy(update={"project_settings_ttl_seconds": 0.0}))  # type: ignore[arg-type]
    cached = ProjectStore(db, settings.model_copy(update={"project_settings_ttl_seconds": 3600.0}))  # type: ignore[arg-type]
    assert (await reader.get("p")).weight == 1.0 and (await cached.get("p")).weight == 1.0
    await ProjectStore(db, settings).set("p", weight=4)  # type: ignore[arg-type]
    assert (await reader.get("p")).weight == 4.0  # another process sees the change without a restart
    assert (await cached.get("p")).weight == 1.0  # ... once its cache entry is older than the TTL
    assert (await cached.get("p", fresh=True)).weight == 4.0


async def test_quota_counts_unfinished_requests_and_gives_them_back(settings: Settings, db: object) -> None:
    store = ProjectStore(db, settings)  # type: ignore[arg-type]
    batches = BatchStore(db)  # type: ignore[arg-type]
    assert await store.quota_problem("q", "m", 10**9) is None  # no limit by default
    await store.set("q", max_enqueued=100)
    doc = new_batch_document(project="q", endpoint="/v1/chat/completions", input_file_id="file-x",
                             input={"kind": "file", "key": "k", "bytes": 1}, completion_window="24h",
                             expires_in_s=86400, model="m")
    doc.update(status="in_progress", request_counts={"total": 80, "completed": 10, "failed": 0})
    await batches.insert(doc)
    assert await store.enqueued("q", "m") == 70 and await store.enqueued("q", "other") == 0
    assert await store.quota_problem("q", "m", 30) is None
    problem = await store.quota_problem("q", "m", 31)
    assert problem is not None and "max_enqueued" in problem and "100" in problem
    # Lines finish: the quota comes back without any counter being decremented.
    await batches.update_fields(doc["_id"], {"request_counts": {"total": 80, "completed": 60, "failed": 10}})
    assert await store.quota_problem("q", "m", 31) is None
    assert await store.enqueued_by_model() == {("q", "m"): 10}
