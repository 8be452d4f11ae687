"""The real `offhours api` process: bounded memory for a 300 MB file, and SIGKILL loses nothing.

Memory is measured where it matters — the server's peak RSS (VmHWM from /proc) — and in this
process too (`resource`), since the client streams the upload from a generator and reads the
download in chunks. The bounds are far below the file size: holding the file would fail them.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from services.api.process import ApiProcess
from services.http.auth import ApiKeyStore
from services.settings import Settings
from services.state.files import FILES_COLLECTION, UPLOADING
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore
from tests.support.wait import wait_for

MIB = 1024 * 1024
SERVER_RSS_GROWTH_LIMIT = 96 * MIB
CLIENT_RSS_GROWTH_LIMIT = 64 * MIB

pytestmark = pytest.mark.slow  # a 300 MB file and SIGKILLed api processes


def batch_line(i: int, size: int) -> bytes:
    head = b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "p": "' % i
    return head + b"x" * (size - len(head) - 4) + b'"}}\n'


async def jsonl_stream(lines: int, line_size: int, digest: hashlib._Hash, chunk_lines: int = 160) -> AsyncIterator[bytes]:
    for start in range(0, lines, chunk_lines):
        chunk = b"".join(batch_line(i, line_size) for i in range(start, min(start + chunk_lines, lines)))
        digest.update(chunk)
        yield chunk


def self_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


async def new_key(settings: Settings, project: str) -> str:
    db = open_database(settings)
    try:
        key, _ = await ApiKeyStore(db).create(project)
        return key
    finally:
        await close_database(db)


async def upload(session: aiohttp.ClientSession, url: str, key: str, data: object, purpose: str = "batch") -> dict:
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", data, filename="big.jsonl", content_type="application/octet-stream")
    async with session.post(f"{url}/v1/files", data=form, headers={"Authorization": f"Bearer {key}"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def download_digest(session: aiohttp.ClientSession, url: str, key: str, file_id: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    async with session.get(f"{url}/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(MIB):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def test_300_mb_upload_and_download_in_bounded_memory(settings: Settings, tmp_path: Path) -> None:
    lines, line_size = 48_000, 6_554  # ≈ 300 MiB, under the 50,000-line limit: the JSONL check runs throughout
    api = await ApiProcess(settings, log_file=tmp_path / "api.log").start()
    try:
        key = await new_key(settings, "big")
        async with aiohttp.ClientSession() as session:
            await upload(session, api.base_url, key, b'{"warm": "up"}\n')  # load every code path first
            server_before, client_before = api.peak_rss_bytes(), self_peak_rss()

            sent = hashlib.sha256()
            body = await upload(session, api.base_url, key, jsonl_stream(lines, line_size, sent))
            assert body["bytes"] == lines * line_size
            size, got = await download_digest(session, api.base_url, key, body["id"])

            server_growth, client_growth = api.peak_rss_bytes() - server_before, self_peak_rss() - client_before
        assert (size, got) == (lines * line_size, sent.hexdigest())
        print(f"\n300 MB: server peak RSS +{server_growth / MIB:.1f} MiB, test process +{client_growth / MIB:.1f} MiB")
        assert server_growth < SERVER_RSS_GROWTH_LIMIT, f"server peak RSS grew {server_growth / MIB:.0f} MiB"
        assert client_growth < CLIENT_RSS_GROWTH_LIMIT, f"test process peak RSS grew {client_growth / MIB:.0f} MiB"
    finally:
        api.stop()


async def test_sigkill_between_upload_and_download_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    data = b"".join(batch_line(i, 2000) for i in range(6000))  # 12 MB: a real multipart upload
    api = await ApiProcess(settings, log_file=tmp_path / "api.log").start()
    try:
        key = await new_key(settings, "crash")
        async with aiohttp.ClientSession() as session:
            body = await upload(session, api.base_url, key, data)
            api.kill()
            api = await ApiProcess(settings, port=api.port, log_file=tmp_path / "api.log").start()
            size, got = await download_digest(session, api.base_url, key, body["id"])
            async with session.get(f"{api.base_url}/v1/files/{body['id']}",
                                   headers={"Authorization": f"Bearer {key}"}) as resp:
                assert await resp.json() == body
        assert (size, got) == (len(data), hashlib.sha256(data).hexdigest())
    finally:
        api.stop()


async def test_sigkill_during_upload_leaves_nothing_after_the_sweep(settings: Settings, tmp_path: Path) -> None:
    api = await ApiProcess(settings, log_file=tmp_path / "api.log").start()
    half_sent = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        for i in range(1000):
            yield b"y" * MIB
            if i == 20:  # past two S3 parts
                half_sent.set()
                await asyncio.sleep(3600)

    try:
        key = await new_key(settings, "crash")
        async with aiohttp.ClientSession() as session:
            uploading = asyncio.create_task(upload(session, api.base_url, key, endless(), purpose="user_data"))
            await half_sent.wait()
            db = open_database(settings)
            try:
                async def uploading_recorded() -> bool:
                    return bool(await db[FILES_COLLECTION].count_documents({"state": UPLOADING}))

                await wait_for(uploading_recorded, 5, what="the server to record the upload")
                await asyncio.sleep(0.5)  # a dwell, not a wait: let it stream more parts to S3 before the kill
                api.kill()
                with pytest.raises(aiohttp.ClientError):
                    await uploading
                assert await db[FILES_COLLECTION].count_documents({"state": UPLOADING}) == 1

                # A restarted api whose sweeper treats uploads older than a second as abandoned.
                api = await ApiProcess(
                    settings.model_copy(update={"files_stale_upload_seconds": 1, "files_sweep_interval_seconds": 0.2}),
                    port=api.port, log_file=tmp_path / "api.log",
                ).start()
                async def reclaimed() -> bool:
                    return not await db[FILES_COLLECTION].count_documents({})

                await wait_for(reclaimed, 30, interval=0.2, what="the sweeper to reclaim the abandoned upload")
            finally:
                await close_database(db)
        async with ObjectStore(settings) as objects:
            assert await objects.list_keys("files/") == []
    finally:
        api.stop()
