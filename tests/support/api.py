"""A handle on the public API app (files + batches + webhooks) served on loopback: API keys for fresh
projects, the official `openai` SDK, plain HTTP, and the stores behind the server."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from openai import AsyncOpenAI
from pymongo.asynchronous.database import AsyncDatabase

from services.http.auth import ApiKeyStore
from services.settings import Settings
from services.state.batches import BatchStore
from services.state.files import FileStore, new_file_id, object_key
from services.stores.s3 import ObjectStore


@dataclass
class ServedApi:
    """An API app served on loopback and what stands behind it; the handles below add to it."""

    url: str
    settings: Settings
    db: AsyncDatabase[Any]
    objects: ObjectStore
    http: aiohttp.ClientSession

    client_timeout_s = 30.0

    async def new_key(self, project: str | None = None) -> tuple[str, str]:
        """(api key, project) for a new (or the given) project."""
        project = project or f"proj-{uuid.uuid4().hex[:8]}"
        key, _ = await ApiKeyStore(self.db).create(project)
        return key, project

    def client(self, key: str) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=self.client_timeout_s)

    async def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> tuple[int, Any]:
        """Plain HTTP: (status, decoded JSON body, or the raw bytes of a body that is not JSON)."""
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, f"{self.url}{path}", headers=headers, **kw) as resp:
            body = await resp.read()
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, body


@dataclass
class Api(ServedApi):
    """The whole public API (files + batches + webhooks)."""

    @property
    def store(self) -> BatchStore:
        return BatchStore(self.db)

    async def key(self, project: str | None = None) -> tuple[str, str]:
        """(api key, project) for a new (or the given) project."""
        return await self.new_key(project)

    async def add_file(self, project: str, content: bytes, *, purpose: str = "batch") -> str:
        """A file of `project` with these bytes, registered the way the service registers outputs."""
        file_id = new_file_id()
        await self.objects.put_bytes(object_key(file_id), content)
        await FileStore(self.db, self.objects).register_existing(
            project, object_key(file_id), "input.jsonl", purpose, len(content), file_id=file_id
        )
        return file_id


MakeApi = Callable[..., Awaitable[Api]]
