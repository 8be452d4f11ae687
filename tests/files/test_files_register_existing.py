"""FileStore.register_existing: how the dispatcher turns an S3 object it wrote into a file."""

from __future__ import annotations

import pytest

from services.state.files import new_file_id, object_key
from tests.support.files import FilesApi


async def test_registered_object_is_a_file_of_the_project(files_api: FilesApi) -> None:
    key = await files_api.key("owner")
    file_id = new_file_id()
    data = b'{"id": "r1"}\n{"id": "r2"}\n'
    await files_api.objects.put_bytes(object_key(file_id), data)

    record = await files_api.store.register_existing(
        "owner", object_key(file_id), "batch_1_output.jsonl", "batch_output", len(data), file_id=file_id
    )
    again = await files_api.store.register_existing(  # a re-run after a crash: same file, no error
        "owner", object_key(file_id), "batch_1_output.jsonl", "batch_output", len(data), file_id=file_id
    )
    assert again == record

    client = files_api.client(key)
    f = await client.files.retrieve(file_id)
    assert (f.purpose, f.bytes, f.filename) == ("batch_output", len(data), "batch_1_output.jsonl")
    assert (await client.files.content(file_id)).content == data
    assert [x.id for x in (await client.files.list(purpose="batch_output")).data] == [file_id]

    await client.files.delete(file_id)
    assert await files_api.leftovers() == ([], [])


async def test_an_id_cannot_be_taken_over(files_api: FilesApi) -> None:
    file_id = new_file_id()
    await files_api.store.register_existing("a", object_key(file_id), "x", "batch_output", 0, file_id=file_id)
    with pytest.raises(ValueError, match="already registered"):
        await files_api.store.register_existing("b", object_key(file_id), "x", "batch_output", 0, file_id=file_id)
