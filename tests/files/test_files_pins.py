"""Pins: a file a batch is still reading keeps its bytes after a delete or expiry, until released."""

from __future__ import annotations

import time

import openai
import pytest

from tests.support.files import FilesApi, jsonl_lines


async def test_deleted_pinned_file_keeps_its_bytes_until_unpinned(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key("p"))
    f = await client.files.create(file=("in.jsonl", jsonl_lines(3)), purpose="batch")
    store = files_api.store
    record = await store.pin("p", f.id, "batch_1")
    assert record is not None and record.id == f.id
    assert await store.pin("p", f.id, "batch_1") == record  # idempotent per holder

    await client.files.delete(f.id)
    with pytest.raises(openai.NotFoundError):  # gone for the API at once ...
        await client.files.retrieve(f.id)
    assert await store.pin("p", f.id, "batch_2") is None  # ... and for new readers
    # ... but the running batch still reads its bytes, even across sweeps an hour later.
    later = time.time() + 3600
    assert (await store.sweep(stale_upload_seconds=3600, now=later)).total == 0
    assert await files_api.objects.get_bytes(record.key) == jsonl_lines(3)

    await store.unpin(f.id, "batch_1")
    assert (await store.sweep(stale_upload_seconds=3600, now=later)).deleted == 1
    assert await files_api.leftovers() == ([], [])


async def test_expired_pinned_file_waits_for_its_holders(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key("p"))
    f = await client.files.create(file=("in.jsonl", jsonl_lines(1)), purpose="batch",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
    store = files_api.store
    await store.pin("p", f.id, "batch_a")
    await store.pin("p", f.id, "batch_b")

    expired = time.time() + 7200  # sweeps run on a clock past the file's expiry
    await store.sweep(stale_upload_seconds=3600, now=expired)
    assert (await files_api.leftovers())[0] == [f"files/{f.id}"]
    await store.unpin(f.id, "batch_a")
    await store.sweep(stale_upload_seconds=3600, now=expired + 3600)
    assert (await files_api.leftovers())[0] == [f"files/{f.id}"]  # batch_b still reads it
    await store.unpin(f.id, "batch_b")
    await store.sweep(stale_upload_seconds=3600, now=expired + 3600)
    assert await files_api.leftovers() == ([], [])


async def test_pin_sees_only_the_projects_visible_files(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key("owner"))
    f = await client.files.create(file=("in.jsonl", jsonl_lines(1)), purpose="batch")
    assert await files_api.store.pin("intruder", f.id, "batch_x") is None
    assert await files_api.store.pin("owner", "file-missing", "batch_x") is None
