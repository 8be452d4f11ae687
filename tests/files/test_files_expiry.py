"""Expired files vanish at once; the sweeper deletes their bytes and documents, finishes interrupted
deletes and reclaims uploads abandoned by a dead process."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from services.state.files import DELETING, FILES_COLLECTION, UPLOADING, new_file_id
from tests.support.files import FilesApi, MakeFilesApi
from tests.support.wait import wait_for


async def _age(api: FilesApi, file_id: str, **fields: float) -> None:
    """Move a file's clock fields into the past, as if time had passed."""
    await api.db[FILES_COLLECTION].update_one({"_id": file_id}, {"$set": fields})


async def test_expired_file_disappears_at_once(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key())
    f = await client.files.create(file=("a.txt", b"bytes"), purpose="user_data",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
    keep = await client.files.create(file=("b.txt", b"kept"), purpose="user_data")
    await _age(files_api, f.id, expires_at=time.time() - 1)

    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            await call(f.id)
    assert [x.id for x in (await client.files.list()).data] == [keep.id]


async def test_sweep_removes_expired_deleting_and_stale(files_api: FilesApi) -> None:
    store = files_api.store
    client = files_api.client(await files_api.key("p"))
    expired = await client.files.create(file=("a.txt", b"old"), purpose="user_data",
                                        expires_after={"anchor": "created_at", "seconds": 3600})
    alive = await client.files.create(file=("b.txt", b"new"), purpose="user_data",
                                      expires_after={"anchor": "created_at", "seconds": 3600})
    half_deleted = await client.files.create(file=("c.txt", b"gone"), purpose="user_data")
    await _age(files_api, expired.id, expires_at=time.time() - 1)
    # A delete whose process died after hiding the file.
    await _age(files_api, half_deleted.id, updated_at=time.time() - 3600)
    await files_api.db[FILES_COLLECTION].update_one({"_id": half_deleted.id}, {"$set": {"state": DELETING}})
    # An upload whose process died after its first part.
    stale = await store.begin_upload("p", new_file_id(), "big.bin", now=time.time() - 7200)
    writer = files_api.objects.multipart_writer(stale.key)
    await writer.write(b"\0" * (5 * 1024 * 1024))  # fills a part: a real multipart upload is open
    # A live upload (recent) must be left alone.
    live = await store.begin_upload("p", new_file_id(), "live.bin")

    report = await store.sweep(stale_upload_seconds=3600)
    assert (report.expired, report.deleted, report.stale_uploads) == (1, 1, 1)

    keys, docs = await files_api.leftovers()
    assert keys == [f"files/{alive.id}"]
    assert sorted(d["_id"] for d in docs) == sorted([alive.id, live.file_id])
    assert (await store.sweep(stale_upload_seconds=3600)).total == 0  # idempotent


async def test_sweeper_task_runs_in_the_app(make_files_api: MakeFilesApi) -> None:
    api = await make_files_api(files_sweep_interval_seconds=0.1)
    client = api.client(await api.key())
    f = await client.files.create(file=("a.txt", b"x"), purpose="user_data",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
    await _age(api, f.id, expires_at=time.time() - 1)

    async def swept() -> bool:
        return await api.leftovers() == ([], [])

    await wait_for(swept, 10, what="the app's sweeper to remove the expired file")


async def test_two_sweepers_remove_each_file_once(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key())
    ids = []
    for i in range(6):
        f = await client.files.create(file=(f"{i}.txt", b"x"), purpose="user_data",
                                      expires_after={"anchor": "created_at", "seconds": 3600})
        ids.append(f.id)
    expired = time.time() + 7200  # both sweep on a clock past every file's expiry
    a, b = await asyncio.gather(files_api.store.sweep(stale_upload_seconds=3600, now=expired),
                                files_api.store.sweep(stale_upload_seconds=3600, now=expired))
    assert a.expired + b.expired == len(ids)
    assert await files_api.leftovers() == ([], [])


async def test_finish_after_reclaim_is_refused(files_api: FilesApi) -> None:
    """An upload the sweeper reclaimed (its process looked dead) cannot come back to life."""
    store = files_api.store
    pending = await store.begin_upload("p", new_file_id(), "slow.bin", now=time.time() - 7200)
    await store.sweep(stale_upload_seconds=3600)
    assert await store.finish_upload(pending, purpose="user_data", size=1, expires_at=None) is None
    assert await files_api.db[FILES_COLLECTION].count_documents({"state": UPLOADING}) == 0
