"""The whole service as processes (api, dispatcher, worker, notifier): a real batch, created with the
openai SDK, runs to completion and is pushed — as signed webhooks and as events on the topic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import pytest_asyncio

from services.runtime.child_process import ServiceProcess
from tests.support.lines import chat_line, jsonl
from tests.support.notifier import MakeReceiver, run_example, unwrap
from tests.support.processes import MakeStack, ServiceStack, upload, wait_status

pytestmark = pytest.mark.e2e  # the whole service as processes

WEBHOOK_SETTINGS = {
    "webhook_allowlist": ["127.0.0.1/32"],
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_delay_seconds": 0.3,
    "webhook_poll_interval_seconds": 0.2,
}


@pytest_asyncio.fixture(loop_scope="session")
async def stack(make_stack: MakeStack, tmp_path: Path) -> AsyncIterator[tuple[ServiceStack, ServiceProcess]]:
    s = await make_stack(workers=("null-model",), **WEBHOOK_SETTINGS)
    notifier = ServiceProcess(s.settings, ["notifier"], name="notifier", log_file=s.logs / "notifier.log")
    await notifier.start()
    try:
        yield s, notifier
    finally:
        notifier.stop()


async def test_a_batch_completes_and_is_pushed_everywhere(
    stack: tuple[ServiceStack, ServiceProcess], make_receiver: MakeReceiver
) -> None:
    services, _ = stack
    assert services.api is not None
    client = await services.client()
    endpoint_receiver = await make_receiver()
    callback_receiver = await make_receiver()
    endpoint = await client.webhooks.create(
        url=endpoint_receiver.url, event_types=["batch.in_progress", "batch.completed"], name="e2e"
    )
    async with aiohttp.ClientSession() as http, http.get(
        f"{services.api.base_url}/v1/webhook_callback_secret", headers={"Authorization": f"Bearer {client.api_key}"}
    ) as resp:
        callback_secret = (await resp.json())["signing_secret"]

    file_id = await upload(client, jsonl(chat_line(f"req-{i}") for i in range(6)))
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"callback_url": callback_receiver.url, "ds_name": "webhook e2e"},
    )
    done = await wait_status(client, batch.id)
    assert done.status == "completed", services.log_tail()

    received = await endpoint_receiver.wait_for(2)
    events = sorted((unwrap(r, endpoint.signing_secret) for r in received), key=lambda e: e.type)
    assert [(e.type, e.data.id) for e in events] == [("batch.completed", batch.id), ("batch.in_progress", batch.id)]
    (callback,) = await callback_receiver.wait_for(1)
    event = unwrap(callback, callback_secret)
    assert event.type == "batch.completed" and event.data.id == batch.id
    assert orjson.loads(callback.body)["object"] == "event"

    # A downstream consumer in its own group sees the same batch's every event, in order.
    lines, _ = await run_example(services.settings, "--batch", batch.id, "--until-terminal", "--idle-timeout", "30")
    types = [line["type"] for line in lines]
    assert types[0] == "batch.created" and types[1] == "batch.in_progress"
    assert types[-2:] == ["batch.finalizing", "batch.completed"]
    assert set(types[2:-2]) <= {"batch.progress"}
    assert lines[-1]["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
