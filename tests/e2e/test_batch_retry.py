"""Retrying what did not finish, and output files that expire, on real processes with the official SDK.

One stack serves the module: `gated-model` (an upstream the test releases request by request, to
stop a batch mid-run), `flaky-model` (an upstream that refuses some lines with a 400 for good and
answers others 503 until it recovers; `max_retries = 0`, so a 503 is that line's error at once)
and `null-model`. The workers run one chunk at a time, so "the chunk in flight" is well defined.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
import tomli_w
from openai.types import Batch

from services.inference.registry import DEFAULT_MODELS_FILE
from services.settings import Settings
from services.state.batches import BatchStore
from services.state.files import FileStore, object_key
from services.stores.s3 import ObjectStore
from tests.support.flaky_upstream import FlakyUpstream
from tests.support.lines import CHAT, chat_line, jsonl
from tests.support.models import GATED
from tests.support.processes import ServiceStack, assert_exactly_once, download_lines, upload, wait_status
from tests.support.settings import fast_settings
from tests.support.upstream import GatedUpstream
from tests.support.wait import wait_for

FLAKY = "flaky-model"


def write_models(path: Path, gated_url: str, flaky_url: str) -> Path:
    with open(DEFAULT_MODELS_FILE, "rb") as f:
        registry = tomllib.load(f)
    common = {"engine": "upstream", "endpoints": [CHAT], "max_concurrency": 4, "max_retries": 0,
              "server_error_retries": 0}
    registry["models"][GATED] = {**common, "base_url": gated_url, "chunk_lines": 2,
                                 "description": "test upstream the test releases request by request"}
    registry["models"][FLAKY] = {**common, "base_url": flaky_url, "chunk_lines": 4,
                                 "description": "test upstream with refused and overloaded lines"}
    path.write_text(tomli_w.dumps(registry))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gated() -> AsyncIterator[GatedUpstream]:
    server = await GatedUpstream().start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def flaky() -> AsyncIterator[FlakyUpstream]:
    server = await FlakyUpstream().start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory, gated: GatedUpstream,
                flaky: FlakyUpstream) -> AsyncIterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("batch-retry")
    s = fast_settings(module_settings, models_file=write_models(tmp / "models.toml", gated.url, flaky.url),
                      worker_chunks_in_flight=1)
    st = ServiceStack(s, tmp / "logs")
    try:
        await st.start(workers=(GATED, FLAKY, "null-model"))
        yield st
    finally:
        await st.close()


async def retry(client: openai.AsyncOpenAI, batch_id: str) -> Batch:
    # An extension route: the SDK reaches it through its generic `post`, parsing the answer as a Batch.
    return await client.post(f"/batches/{batch_id}/retry", cast_to=Batch)


async def start_gated_batch(client: openai.AsyncOpenAI, gated: GatedUpstream, ids: list[str]) -> str:
    """A 5-chunk batch with its first chunk answered and its second one held in flight by the upstream."""
    received = gated.received
    file_id = await upload(client, jsonl(chat_line(c, model=GATED, max_tokens=5) for c in ids))
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h",
                                        metadata={"ds_name": "gated"})
    await gated.allow(2)
    await gated.wait_received(received + 4)
    return batch.id


async def check_retry(client: openai.AsyncOpenAI, gated: GatedUpstream, original: Any, ids: list[str],
                      code: str) -> None:
    """Retry `original`, let its requests through, and check that both batches together answer every line once."""
    output = await download_lines(client, original.output_file_id)
    errors = await download_lines(client, original.error_file_id)
    assert {e["error"]["code"] for e in errors} == {code}
    # Which chunks ran is the workers' choice; the error file says which lines did not.
    unfinished = [c for c in ids if c in {e["custom_id"] for e in errors}]
    assert len(unfinished) == original.request_counts.failed

    retried = await retry(client, original.id)
    assert retried.status == "validating" and retried.metadata == {"ds_name": "gated", "retry_of": original.id}
    assert (retried.endpoint, retried.completion_window, retried.model) == (CHAT, "24h", GATED)
    await gated.allow(len(unfinished))
    done = await wait_status(client, retried.id)
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed) == (len(unfinished), len(unfinished))
    assert done.error_file_id is None
    again = await download_lines(client, done.output_file_id)
    assert [o["custom_id"] for o in again] == unfinished  # input order, custom_ids kept
    # original output ∪ retry output = every line, and no line in both.
    assert_exactly_once(output, again, ids)
    linked = await client.batches.retrieve(original.id)
    assert linked.model_extra is not None and linked.model_extra["retried_by"] == retried.id


async def test_retry_after_a_cancel(stack: ServiceStack, gated: GatedUpstream) -> None:
    client = await stack.client()
    ids = [f"cancel-{i}" for i in range(10)]
    batch_id = await start_gated_batch(client, gated, ids)
    # Not ended yet: nothing can be retried while it runs.
    with pytest.raises(openai.ConflictError):
        await retry(client, batch_id)
    await client.batches.cancel(batch_id)
    await gated.allow(2)  # the chunk in flight drains
    original = await wait_status(client, batch_id)
    assert original.status == "cancelled"
    assert (original.request_counts.completed, original.request_counts.failed) == (4, 6)
    await check_retry(client, gated, original, ids, "batch_cancelled")


async def test_retry_after_an_expiry(stack: ServiceStack, gated: GatedUpstream) -> None:
    client = await stack.client()
    ids = [f"expire-{i}" for i in range(10)]
    answered = gated.answered
    batch_id = await start_gated_batch(client, gated, ids)
    # The deadline passes now (as a short completion window would make it), through the batch store.
    await BatchStore(stack.db).update_fields(batch_id, {"expires_at": time.time()})
    original = await wait_status(client, batch_id)
    assert original.status == "expired"
    assert (original.request_counts.completed, original.request_counts.failed) == (2, 8)
    # Let the two held requests of the expired batch's chunk finish first: its late result is refused,
    # and the worker is free for the retry's chunks.
    await gated.allow(2)
    await wait_for(lambda: gated.answered >= answered + 4, 60, what="the held requests to be answered")
    await check_retry(client, gated, original, ids, "batch_expired")


async def test_retry_takes_the_503_lines_and_leaves_the_4xx_and_invalid_ones(
    stack: ServiceStack, flaky: FlakyUpstream
) -> None:
    client = await stack.client()
    kinds = ["ok", "busy", "bad", "ok", "busy", "invalid", "bad", "busy", "ok", "ok", "busy", "bad"]
    ids = [f"{kind}-{i}" for i, kind in enumerate(kinds)]
    flaky.failing.update(f"hello {c}" for c in ids if c.startswith("busy"))
    flaky.refused.update(f"hello {c}" for c in ids if c.startswith("bad"))
    lines = [chat_line(c, model=FLAKY, messages=[]) if c.startswith("invalid") else chat_line(c, model=FLAKY)
             for c in ids]
    created = await client.batches.create(input_file_id=await upload(client, jsonl(lines)), endpoint=CHAT,
                                          completion_window="24h")
    original = await wait_status(client, created.id)
    assert original.status == "completed", original.errors
    errors = {e["custom_id"]: e for e in await download_lines(client, original.error_file_id)}
    busy = [c for c in ids if c.startswith("busy")]
    assert sorted(errors) == sorted(c for c in ids if not c.startswith("ok"))
    assert all(errors[c]["response"]["status_code"] == 503 for c in busy)
    assert {errors[c]["response"]["status_code"] for c in errors if c.startswith("bad")} == {400}
    assert errors["invalid-5"]["error"]["code"] == "invalid_body" and errors["invalid-5"]["response"] is None

    flaky.recover()
    retried = await retry(client, original.id)
    content = await client.files.content(retried.input_file_id)
    assert [line for line in content.content.splitlines()] == [chat_line(c, model=FLAKY) for c in busy]
    done = await wait_status(client, retried.id)
    assert done.status == "completed" and done.request_counts.completed == len(busy) and done.error_file_id is None
    assert [o["custom_id"] for o in await download_lines(client, done.output_file_id)] == busy
    # What the server saw: a refused line was sent once, never again; an overloaded one twice.
    assert all(flaky.received[f"hello {c}"] == 1 for c in ids if c.startswith("bad"))
    assert all(flaky.received[f"hello {c}"] == 2 for c in busy)
    # Only refused and invalid lines are left: nothing more to retry.
    done_original = await client.batches.retrieve(original.id)
    assert done_original.model_extra is not None and done_original.model_extra["retried_by"] == retried.id
    with pytest.raises(openai.BadRequestError, match="nothing to retry"):
        await retry(client, done.id)


async def test_output_expires_after_sets_the_output_files_expiry_and_the_sweeper_removes_them(
    stack: ServiceStack,
) -> None:
    project = "expiring-outputs"
    client = await stack.client(project)
    lines = [chat_line("good-0"), chat_line("good-1"), chat_line("bad-2", messages=[])]
    created = await client.batches.create(input_file_id=await upload(client, jsonl(lines)), endpoint=CHAT,
                                          completion_window="24h",
                                          output_expires_after={"anchor": "created_at", "seconds": 3600})
    assert created.model_extra is not None
    assert created.model_extra["output_expires_after"] == {"anchor": "created_at", "seconds": 3600}
    batch = await wait_status(client, created.id)
    assert batch.status == "completed" and batch.output_file_id and batch.error_file_id

    async with ObjectStore(stack.settings) as objects:
        files = FileStore(stack.db, objects)
        expiring = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            meta = await client.files.retrieve(file_id)
            assert meta.purpose == "batch_output" and meta.expires_at == meta.created_at + 3600
            expiring.append(meta)
        # Expired files vanish from reads the moment they expire...
        last = max(m.expires_at for m in expiring if m.expires_at is not None)
        for meta in expiring:
            assert meta.expires_at is not None
            assert await files.get(project, meta.id, now=meta.expires_at - 1) is not None
            assert await files.get(project, meta.id, now=meta.expires_at) is None
        # ... and the sweeper deletes their bytes and metadata (as it runs an hour on).
        report = await files.sweep(stale_upload_seconds=stack.settings.files_stale_upload_seconds, now=last + 1)
        assert report.expired >= 2
        for meta in expiring:
            assert await objects.head(object_key(meta.id)) is None
            with pytest.raises(openai.NotFoundError):
                await client.files.retrieve(meta.id)
    # The batch's input (30 days by default) is still there.
    assert (await client.files.retrieve(batch.input_file_id)).id == batch.input_file_id
