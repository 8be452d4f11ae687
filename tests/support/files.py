"""A handle on the Files API app served on loopback: keys, an SDK client, raw HTTP and hand-built uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.state.files import FILES_COLLECTION, FileStore
from tests.support.api import ServedApi


def jsonl_lines(n: int) -> bytes:
    return b"".join(b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' % i
                    for i in range(n))


@dataclass
class FilesApi(ServedApi):
    """The Files API alone."""

    client_timeout_s = 60.0

    @property
    def store(self) -> FileStore:
        return FileStore(self.db, self.objects)

    async def key(self, project: str | None = None) -> str:
        """An API key of a new (or the given) project."""
        key, _ = await self.new_key(project)
        return key

    async def upload(self, key: str, data: bytes | AsyncIterator[bytes], *, purpose: str | None = "batch",
                     filename: str = "input.jsonl", file_first: bool = False,
                     extra: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST /v1/files with a hand-built form (field order and content chosen by the test)."""
        form = aiohttp.FormData()
        fields = [("purpose", purpose)] if purpose is not None else []
        fields += list((extra or {}).items())
        if file_first:
            form.add_field("file", data, filename=filename, content_type="application/octet-stream")
        for name, value in fields:
            form.add_field(name, value)
        if not file_first:
            form.add_field("file", data, filename=filename, content_type="application/octet-stream")
        return await self.call("POST", "/v1/files", key, data=form)

    async def leftovers(self) -> tuple[list[str], list[dict[str, Any]]]:
        """(S3 keys under files/, file documents): what a failed upload must not leave behind."""
        return await self.objects.list_keys("files/"), await self.db[FILES_COLLECTION].find({}).to_list()


MakeFilesApi = Callable[..., Awaitable[FilesApi]]
