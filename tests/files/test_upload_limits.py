"""Uploads cannot hold the service: concurrent uploads per project are bounded (429), and a body that
stops arriving is abandoned after its read deadline (408) with nothing left behind."""

from __future__ import annotations

import asyncio

from tests.support.files import FilesApi, MakeFilesApi, jsonl_lines
from tests.support.stalled_upload import StalledUpload
from tests.support.wait import wait_for


async def _uploading(api: FilesApi) -> int:
    _, docs = await api.leftovers()
    return sum(1 for d in docs if d.get("state") == "uploading")


async def test_a_stalled_upload_is_abandoned(make_files_api: MakeFilesApi) -> None:
    api = await make_files_api(upload_read_timeout_seconds=0.5)
    key = await api.key()
    stalled = await StalledUpload.start(api.url, key)
    try:
        # The client sends nothing more; the server answers on its own, within a generous safety net.
        status = await asyncio.wait_for(stalled.status(), 60)
        body = await asyncio.wait_for(stalled.reader.read(4096), 60)
    finally:
        await stalled.close()
    assert status == 408 and b"upload_timeout" in body and b"upload_read_timeout_seconds" in body
    # Its S3 multipart upload is aborted and its document removed: nothing is held for it.
    assert await wait_for(lambda: _nothing_left(api), what="the abandoned upload to be cleaned up")
    # Its slot is free again.
    status, _ = await api.upload(key, jsonl_lines(2))
    assert status == 200


async def _nothing_left(api: FilesApi) -> bool:
    keys, docs = await api.leftovers()
    return not keys and not docs


async def test_concurrent_uploads_per_project(make_files_api: MakeFilesApi) -> None:
    api = await make_files_api(project_max_concurrent_uploads=2)
    key = await api.key()
    stalled = [await StalledUpload.start(api.url, key) for _ in range(2)]
    try:
        await wait_for(lambda: _count_is(api, 2), what="both stalled uploads to be receiving")
        status, body = await api.upload(key, jsonl_lines(2))
        assert status == 429 and body["error"]["code"] == "too_many_concurrent_uploads"
        assert "project_max_concurrent_uploads" in body["error"]["message"]
        # Another project is not held up by this one.
        status, _ = await api.upload(await api.key(), jsonl_lines(2))
        assert status == 200
    finally:
        for upload in stalled:
            await upload.close()
    # The dropped connections free their slots.
    async def accepted() -> bool:
        status, _ = await api.upload(key, jsonl_lines(2))
        return status == 200

    await wait_for(accepted, what="an upload to be accepted once the stalled ones are gone")


async def _count_is(api: FilesApi, n: int) -> bool:
    return await _uploading(api) == n
