"""The OpenAI Batch flow with the official `openai` SDK against real processes: api, dispatcher, workers.

One stack serves the whole module (its tests use separate projects, so they cannot see each other).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from aiohttp import web

from schemas.batch_lines import BatchOutputLine
from services.settings import Settings
from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.models import write_models_file
from tests.support.processes import ServiceStack, assert_exactly_once, download_lines, upload, wait_status
from tests.support.settings import fast_settings

DS_TEST = "/v1/chat/ds-test"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("sdk-flow")
    s = fast_settings(module_settings, models_file=write_models_file(tmp / "models.toml", None))
    st = ServiceStack(s, tmp / "logs")
    try:
        await st.start(workers=("batch-test-model", "null-model"))
        yield st
    finally:
        await st.close()


@pytest.mark.parametrize("endpoint", [DS_TEST, CHAT])
async def test_test_model_batch_end_to_end(stack: ServiceStack, endpoint: str) -> None:
    client = await stack.client()
    ids = [f"task-{i}" for i in range(20)]
    file_id = await upload(client, jsonl(chat_line(c, model="batch-test-model", url=endpoint) for c in ids))
    created = await client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h",
                                          metadata={"ds_name": "e2e"})
    assert created.status == "validating" and created.model == "batch-test-model"

    batch = await wait_status(client, created.id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (20, 20, 0)
    assert batch.error_file_id is None and batch.output_file_id is not None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.usage is not None and batch.usage.output_tokens == 20 * 6
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
    assert batch.metadata == {"ds_name": "e2e"}

    output = await download_lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ids  # input order
    for o in output:
        BatchOutputLine.model_validate(o)
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert o["response"]["body"]["choices"][0]["message"]["content"] == "This is a test result."
    assert len({o["id"] for o in output}) == 20
    meta = await client.files.retrieve(batch.output_file_id)
    assert meta.purpose == "batch_output" and meta.bytes > 0


async def test_mixed_good_and_bad_lines(stack: ServiceStack) -> None:
    client = await stack.client()
    lines = []
    good, bad = [], []
    for i in range(30):
        if i % 7 == 3:
            lines.append(chat_line(f"bad-{i}", messages=[]))  # invalid_body: not fatal
            bad.append((f"bad-{i}", i + 1))
        elif i % 7 == 5:
            lines.append(chat_line(f"stream-{i}", stream=True))
            bad.append((f"stream-{i}", i + 1))
        else:
            lines.append(chat_line(f"good-{i}"))
            good.append(f"good-{i}")
    batch = await client.batches.create(input_file_id=await upload(client, jsonl(lines)), endpoint=CHAT,
                                        completion_window="24h")
    batch = await wait_status(client, batch.id)
    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        30, len(good), len(bad))
    output = await download_lines(client, batch.output_file_id)
    errors = await download_lines(client, batch.error_file_id)
    assert [o["custom_id"] for o in output] == good
    assert [(e["custom_id"], e["error"]["line"]) for e in errors] == bad
    assert {e["error"]["code"] for e in errors} == {"invalid_body"}
    assert all(e["response"] is None for e in errors)
    assert_exactly_once(output, errors, good + [c for c, _ in bad])


async def test_invalid_file_fails_with_line_numbers(stack: ServiceStack) -> None:
    client = await stack.client()
    # Each line is a JSON object (the upload's own check passes); what is wrong needs the batch's context.
    lines = [chat_line("a"), chat_line("b"), b'{"method": "POST", "url": "/v1/chat/completions", "body": {}}',
             chat_line("d"),
             chat_line("a"), chat_line("e", model="batch-test-model"),
             b'{"custom_id":"f","method":"GET","url":"/v1/chat/completions","body":{"model":"null-model"}}']
    batch = await client.batches.create(input_file_id=await upload(client, jsonl(lines)), endpoint=CHAT,
                                        completion_window="24h")
    batch = await wait_status(client, batch.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None
    located = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert located == [
        (3, "missing_custom_id", "custom_id"),
        (5, "duplicate_custom_id", "custom_id"),
        (6, "mismatched_model", "body.model"),
        (7, "invalid_method", "method"),
    ]
    assert all(e.message for e in batch.errors.data)


async def test_test_model_line_limit_fails_validation(stack: ServiceStack) -> None:
    client = await stack.client()
    lines = [chat_line(f"t{i}", model="batch-test-model", url=DS_TEST) for i in range(101)]
    batch = await client.batches.create(input_file_id=await upload(client, jsonl(lines)), endpoint=DS_TEST,
                                        completion_window="24h")
    batch = await wait_status(client, batch.id)
    assert batch.status == "failed"
    assert [(e.code, e.line) for e in batch.errors.data] == [("too_many_requests", 101)]


async def test_another_projects_batch_and_files_are_404(stack: ServiceStack) -> None:
    owner, stranger = await stack.client(), await stack.client()
    file_id = await upload(owner, jsonl([chat_line("x")]))
    batch = await owner.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    batch = await wait_status(owner, batch.id)
    assert batch.status == "completed"
    with pytest.raises(openai.NotFoundError):
        await stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await stranger.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        await stranger.files.content(batch.output_file_id)
    assert batch.id not in [b.id async for b in stranger.batches.list()]


async def test_url_input_is_copied_and_run(stack: ServiceStack) -> None:
    body = jsonl(chat_line(f"u{i}") for i in range(50))

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/jsonl")

    app = web.Application()
    app.router.add_get("/input.jsonl", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/input.jsonl"
        client = await stack.client()
        batch = await client.batches.create(input_file_id=url, endpoint=CHAT, completion_window="24h")
        batch = await wait_status(client, batch.id)
    finally:
        await runner.cleanup()
    assert batch.status == "completed", batch.errors
    assert batch.model == "null-model" and batch.request_counts.completed == 50
    output = await download_lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"u{i}" for i in range(50)]


async def test_unreachable_url_input_fails(stack: ServiceStack) -> None:
    client = await stack.client()
    batch = await client.batches.create(input_file_id="http://127.0.0.1:9/nothing.jsonl", endpoint=CHAT,
                                        completion_window="24h")
    batch = await wait_status(client, batch.id)
    assert batch.status == "failed" and batch.errors.data[0].code == "input_unavailable"


async def test_models_lists_the_live_workers(stack: ServiceStack) -> None:
    client = await stack.client()
    names = [m.id async for m in client.models.list()]
    assert {"batch-test-model", "null-model"} <= set(names)


async def test_50000_line_batch_of_the_null_model(stack: ServiceStack) -> None:
    client = await stack.client()
    ids = [f"row-{i:05d}" for i in range(50_000)]
    file_id = await upload(client, jsonl(chat_line(c) for c in ids))
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    batch = await wait_status(client, batch.id, timeout_s=300)
    assert batch.status == "completed", batch.errors
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        50_000, 50_000, 0)
    output = await download_lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ids
    assert len({o["id"] for o in output}) == 50_000


async def test_input_file_deleted_while_batch_runs_still_completes(stack: ServiceStack) -> None:
    """The batch pins its input file: a delete hides the file at once but keeps its bytes until
    the batch is terminal, so the batch still finishes every line."""
    client = await stack.client()
    ids = [f"pinned-{i}" for i in range(10)]
    file_id = await upload(client, jsonl(chat_line(c, model="null-model") for c in ids))
    created = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    deleted = await client.files.delete(file_id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(file_id)

    batch = await wait_status(client, created.id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None and batch.request_counts.completed == 10
    output = await download_lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ids
