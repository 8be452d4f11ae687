"""`offhours notifier` as a real process: SIGKILLed with retries pending, restarted, nothing lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.notifier.deliveries import DeliveryStore
from services.runtime.child_process import ServiceProcess
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from tests.support.api import Api
from tests.support.notifier import Batches, MakeReceiver, unwrap
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow  # SIGKILL of a real notifier process


def notifier_process(settings: Settings, log_file: Path) -> ServiceProcess:
    return ServiceProcess(settings, ["notifier"], name="notifier", log_file=log_file)


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.kill()


async def test_sigkill_with_retries_pending_then_restart_delivers_with_the_same_webhook_id(
    api: Api, batches: Batches, make_receiver: MakeReceiver, wh_settings: Settings,
    processes: list[ServiceProcess], tmp_path: Path,
) -> None:
    receiver = await make_receiver(default=500)
    key, project = await api.key()
    status, endpoint = await api.call("POST", "/v1/webhook_endpoints", key, json={"url": receiver.url})
    assert status == 200
    # Slow enough retries that the kill lands while one is pending, fast enough for a test.
    settings = wh_settings.model_copy(update={"webhook_retry_base_seconds": 1.0, "webhook_retry_max_delay_seconds": 2.0})
    first = notifier_process(settings, tmp_path / "notifier-1.log")
    processes.append(first)
    await first.start()

    batch_id = await batches.complete(project)
    db = open_database(settings)
    deliveries = DeliveryStore(db)
    try:
        async def failed_and_pending() -> dict[str, Any] | None:
            doc = await deliveries.for_batch(batch_id)
            return doc if doc and doc["status"] == "pending" and doc["attempt_count"] >= 1 else None

        before = await wait_for(failed_and_pending, what="a failed attempt recorded with a retry pending")
        first.kill()
        sent_before_kill = len(receiver.requests)
        assert sent_before_kill >= 1

        receiver.default = 200
        second = notifier_process(settings, tmp_path / "notifier-2.log")
        processes.append(second)
        second.spawn()

        async def delivered() -> dict[str, Any] | None:
            doc = await deliveries.for_batch(batch_id)
            return doc if doc and doc["status"] == "delivered" else None

        after = await wait_for(delivered, timeout_s=90, what="delivery by the restarted notifier")
        metrics = await second.metrics_text()
        assert 'offhours_notifier_attempts_total{outcome="succeeded"}' in metrics
        exit_status = second.stop()
    finally:
        await close_database(db)

    assert after["_id"] == before["_id"]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {before["_id"]}
    assert len(receiver.requests) > sent_before_kill  # the restarted process sent it
    assert receiver.requests[-1].headers["webhook-id"] == before["_id"]
    event = unwrap(receiver.requests[-1], endpoint["signing_secret"])
    assert event.data.id == batch_id and event.type == "batch.completed"
    assert after["attempt_count"] >= 2 and after["attempts"][-1]["response_code"] == 200
    assert exit_status == 0  # SIGTERM is a clean shutdown
