"""ObjectStore against the real local S3 (rclone serve s3)."""

from __future__ import annotations

import os

import pytest

from services.settings import Settings
from services.stores.s3 import MIB, ObjectNotFound, ObjectStore


async def test_round_trip_head_list_delete(settings: Settings) -> None:
    async with ObjectStore(settings) as store:
        await store.ensure_bucket()  # idempotent: the fixture created it already
        await store.put_bytes("a/one", b"hello world", content_type="text/plain")
        await store.put_bytes("a/two", b"")
        await store.put_bytes("b/three", b"x")
        assert await store.get_bytes("a/one") == b"hello world"
        assert await store.get_bytes("a/two") == b""
        assert await store.head("a/one") == 11
        assert await store.head("missing") is None
        with pytest.raises(ObjectNotFound):
            await store.get_bytes("missing")
        assert await store.list_keys("a/") == ["a/one", "a/two"]
        assert await store.delete_prefix("a/") == 2
        assert await store.list_keys("") == ["b/three"]
        await store.delete("b/three")
        await store.delete("b/three")  # deleting a missing key is fine
        assert await store.list_keys() == []
        with pytest.raises(ValueError):
            await store.delete_prefix("")


async def test_ranged_reads_and_streaming(settings: Settings) -> None:
    data = bytes(range(256)) * 1000  # 256 kB, every offset distinguishable
    async with ObjectStore(settings) as store:
        await store.put_bytes("r", data)
        assert await store.get_range("r", 0, 10) == data[:10]
        assert await store.get_range("r", 1000, 5000) == data[1000:5000]
        assert await store.get_range("r", len(data) - 3, len(data) + 100) == data[-3:]  # clamped
        assert await store.get_range("r", 5, 5) == b""
        chunks = [c async for c in store.iter_object("r", chunk_size=10_000)]
        assert all(len(c) <= 10_000 for c in chunks) and len(chunks) >= 26
        assert b"".join(chunks) == data
        tail = b"".join([c async for c in store.iter_object("r", chunk_size=4096, start=250_000)])
        assert tail == data[250_000:]
        mid = b"".join([c async for c in store.iter_object("r", start=100, end=200)])
        assert mid == data[100:200]
        assert [c async for c in store.iter_object("r", start=len(data))] == []
        with pytest.raises(ObjectNotFound):
            [c async for c in store.iter_object("nope")]


async def test_multipart_writer_large_object(settings: Settings) -> None:
    block = os.urandom(MIB)
    async with ObjectStore(settings) as store:
        async with store.multipart_writer("big/object", part_size=8 * MIB) as w:
            for i in range(20):
                # Odd-sized writes so part boundaries fall inside writes.
                await w.write(block[: MIB - i])
                await w.write(block[MIB - i :])
        assert w.bytes_written == 20 * MIB
        assert await store.head("big/object") == 20 * MIB
        # Ranged reads across the part boundary at 8 MiB.
        assert await store.get_range("big/object", 8 * MIB - 5, 8 * MIB + 5) == (block[-5:] + block[:5])
        total = 0
        async for chunk in store.iter_object("big/object", chunk_size=MIB):
            assert len(chunk) <= MIB
            total += len(chunk)
        assert total == 20 * MIB


async def test_small_object_through_writer_is_single_put(settings: Settings) -> None:
    async with ObjectStore(settings) as store:
        async with store.multipart_writer("small") as w:
            await w.write(b"line 1\n")
            await w.write(b"line 2\n")
        assert await store.get_bytes("small") == b"line 1\nline 2\n"
        async with store.multipart_writer("empty"):
            pass
        assert await store.head("empty") == 0


async def test_multipart_abort_leaves_no_object(settings: Settings) -> None:
    async with ObjectStore(settings) as store:
        await store.put_bytes("keep", b"old content")
        # An exception inside the block aborts, after parts were already uploaded.
        with pytest.raises(RuntimeError, match="boom"):
            async with store.multipart_writer("keep", part_size=5 * MIB) as w:
                await w.write(os.urandom(11 * MIB))
                raise RuntimeError("boom")
        assert await store.get_bytes("keep") == b"old content"  # the previous object survives

        async with store.multipart_writer("gone", part_size=5 * MIB) as w:
            await w.write(os.urandom(6 * MIB))
            await w.abort()
        assert await store.head("gone") is None
        with pytest.raises(RuntimeError):
            await w.write(b"more")
        uploads = await store.client.list_multipart_uploads(Bucket=store.bucket)
        assert not uploads.get("Uploads")
