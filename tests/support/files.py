"""A handle on the Files API app served on loopback: keys, an SDK client, raw HTTP and hand-built uploads."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from openai import AsyncOpenAI
from pymongo.asynchronous.database import AsyncDatabase

from services.http.auth import ApiKeyStore
from services.settings import Settings
from services.state.files import FILES_COLLECTION, FileStore
from services.stores.s3 import ObjectStore


def jsonl_lines(n: int) -> bytes:
    return b"".join(b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n' % i
                    for i in range(n))


@dataclass
class FilesApi:
    url: str
    settings: Settings
    db: AsyncDatabase[Any]
    objects: ObjectStore
    http: aiohttp.ClientSession

    @property
    def store(self) -> FileStore:
        return FileStore(self.db, self.objects)

    async def key(self, project: str | None = None) -> str:
        """An API key of a new (or the given) project."""
        key, _ = await ApiKeyStore(self.db).create(project or f"proj-{uuid.uuid4().hex[:8]}")
        return key

    def client(self, key: str) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    async def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> tuple[int, Any]:
        """Plain HTTP: (status, JSON body or None)."""
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, f"{self.url}{path}", headers=headers, **kw) as resp:
            body = await resp.read()
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, body

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
