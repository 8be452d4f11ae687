"""A project sees only its own files: another project's ids answer 404, never 403."""

from __future__ import annotations

import openai
import pytest

from tests.support.files import FilesApi, jsonl_lines


async def test_other_projects_file_is_not_found(files_api: FilesApi) -> None:
    alice = files_api.client(await files_api.key("alice"))
    bob = files_api.client(await files_api.key("bob"))
    mine = await alice.files.create(file=("a.jsonl", jsonl_lines(2)), purpose="batch")
    theirs = await bob.files.create(file=("b.jsonl", jsonl_lines(1)), purpose="batch")

    with pytest.raises(openai.NotFoundError):
        await bob.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await bob.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        await bob.files.delete(mine.id)
    assert [f.id for f in (await bob.files.list()).data] == [theirs.id]
    assert [f.id for f in (await alice.files.list()).data] == [mine.id]
    # Bob's failed delete changed nothing.
    assert (await alice.files.content(mine.id)).content == jsonl_lines(2)


async def test_the_404_does_not_reveal_existence(files_api: FilesApi) -> None:
    """A foreign id and a made-up id get byte-identical answers."""
    owner, other = await files_api.key("owner"), await files_api.key("other")
    f = await files_api.client(owner).files.create(file=("a.txt", b"x"), purpose="user_data")
    made_up = "file-" + "f" * 24
    status_a, body_a = await files_api.call("GET", f"/v1/files/{f.id}", other)
    status_b, body_b = await files_api.call("GET", f"/v1/files/{made_up}", other)
    assert status_a == status_b == 404
    assert body_a["error"]["message"].replace(f.id, "ID") == body_b["error"]["message"].replace(made_up, "ID")


async def test_two_keys_of_one_project_share_files(files_api: FilesApi) -> None:
    first, second = await files_api.key("team"), await files_api.key("team")
    f = await files_api.client(first).files.create(file=("a.txt", b"x"), purpose="user_data")
    assert (await files_api.client(second).files.retrieve(f.id)).id == f.id
