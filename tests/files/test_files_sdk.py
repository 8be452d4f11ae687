"""The official openai SDK against the Files API: create, list (paging), retrieve, content, delete."""

from __future__ import annotations

import io

import openai
import pytest

from tests.support.files import FilesApi, jsonl_lines


async def test_sdk_round_trip(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key())
    data = jsonl_lines(3)

    created = await client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.id.startswith("file-")
    assert (created.bytes, created.filename, created.purpose, created.object) == (len(data), "requests.jsonl", "batch", "file")

    retrieved = await client.files.retrieve(created.id)
    assert retrieved == created

    content = await client.files.content(created.id)
    assert content.content == data

    listed = await client.files.list()
    assert [f.id for f in listed.data] == [created.id]

    deleted = await client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.delete(created.id)
    assert (await client.files.list()).data == []
    # Bytes and metadata are both gone.
    assert await files_api.leftovers() == ([], [])


async def test_paging_with_after_in_both_orders(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key())
    ids = [(await client.files.create(file=(f"f{i}.txt", b"x" * i), purpose="user_data")).id for i in range(5)]

    # Newest first by default; `after` is the previous page's last_id.
    page = await client.files.list(limit=2)
    seen = [f.id for f in page.data]
    assert page.has_more and page.last_id == seen[-1]
    while page.has_more:
        page = await client.files.list(limit=2, after=page.last_id)
        seen += [f.id for f in page.data]
    assert seen == ids[::-1]

    asc = await client.files.list(limit=3, order="asc")
    assert [f.id for f in asc.data] == ids[:3] and asc.has_more
    rest = await client.files.list(limit=3, order="asc", after=asc.data[-1].id)
    assert [f.id for f in rest.data] == ids[3:] and not rest.has_more

    # The SDK's auto-paging iterator follows has_more/after by itself.
    assert [f.id async for f in client.files.list(limit=2, order="asc")] == ids


async def test_paging_survives_deleting_while_iterating(files_api: FilesApi) -> None:
    """A cursor is a comparison on ids, so deleting the page's last file does not break `after`."""
    client = files_api.client(await files_api.key())
    ids = [(await client.files.create(file=(f"f{i}.txt", b"x"), purpose="user_data")).id for i in range(4)]
    deleted = []
    async for f in client.files.list(limit=1, order="asc"):
        await client.files.delete(f.id)
        deleted.append(f.id)
    assert deleted == ids
    assert (await client.files.list()).data == []


async def test_list_filters_by_purpose(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key())
    batch = await client.files.create(file=("a.jsonl", jsonl_lines(1)), purpose="batch")
    other = await client.files.create(file=("b.txt", b"hello"), purpose="user_data")
    assert [f.id for f in (await client.files.list(purpose="batch")).data] == [batch.id]
    assert [f.id for f in (await client.files.list(purpose="user_data")).data] == [other.id]
    assert (await client.files.list(purpose="vision")).data == []


async def test_expires_after_and_the_batch_default(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key())
    f = await client.files.create(
        file=("a.txt", b"hi"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.expires_at == f.created_at + 3600
    # OpenAI's rule: batch files expire after 30 days unless told otherwise; other purposes never.
    b = await client.files.create(file=("b.jsonl", jsonl_lines(1)), purpose="batch")
    assert b.expires_at == b.created_at + files_api.settings.files_batch_default_expires_seconds
    u = await client.files.create(file=("c.txt", b"hi"), purpose="user_data")
    assert u.expires_at is None


async def test_content_keeps_the_filename_and_length(files_api: FilesApi) -> None:
    key = await files_api.key()
    client = files_api.client(key)
    f = await client.files.create(file=("données 1.jsonl", jsonl_lines(2)), purpose="batch")
    assert f.filename == "données 1.jsonl"
    async with files_api.http.get(
        f"{files_api.url}/v1/files/{f.id}/content", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(f.bytes)
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert "attachment" in resp.headers["Content-Disposition"]
        assert await resp.read() == jsonl_lines(2)


async def test_empty_non_batch_file_is_fine(files_api: FilesApi) -> None:
    client = files_api.client(await files_api.key())
    f = await client.files.create(file=("empty.txt", b""), purpose="user_data")
    assert f.bytes == 0
    assert (await client.files.content(f.id)).content == b""
