"""Fixtures of the notifier tests, all on real servers over loopback.

- `wh_settings`: the test's Settings with the loopback allowlist and short retry timings.
- `make_receiver()`: a real aiohttp server on 127.0.0.1 that records every POST; its answers are
  programmable (`receiver.answers = [500, 500, 200]`, `receiver.hang = True`).
- `make_api(**overrides)`: the public API app (files + batches + webhooks) on a loopback port,
  with `api.key()` minting an API key for a fresh project and `api.client(key)` an openai SDK client.
- `start_notifier(settings)`: the notifier loops in-process (stopped at teardown).
- `batches`: drives batches through their statuses with the real BatchStore and outbox publisher,
  so the events on the topic are exactly what the batches service and dispatcher publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI
from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Producer
from events.topics import batch_events_topic, ensure_topics
from services.api.app import create_api_app
from services.http.auth import ApiKeyStore
from services.notifier.service import Notifier
from services.settings import Settings
from services.state.batches import BatchStore, new_batch_document
from services.state.outbox import EventPublisher
from services.stores.mongo import close_database, open_database

from .helpers import eventually

LOOPBACK_ALLOWED = ["127.0.0.1/32"]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Receiver:
    """A webhook receiver: answers `answers` in turn (then `default`), after `delay_s`, or hangs while
    `hang` is set (until `release`)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    default: int = 200
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    answered: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b"ok"
    delay_s: float = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Received(dict(request.headers), await request.read(), request.path))
        if self.hang:
            await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.answers.pop(0) if self.answers else self.default
        self.answered += 1
        return web.Response(status=status, body=self.response_body, headers=self.extra)

    async def wait_for(self, n: int, timeout_s: float = 60.0) -> list[Received]:
        async def enough() -> bool:
            return len(self.requests) >= n

        await eventually(enough, timeout_s, f"{n} requests at {self.url} (got {len(self.requests)})")
        return self.requests


MakeReceiver = Callable[..., Awaitable[Receiver]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_receiver() -> AsyncIterator[MakeReceiver]:
    runners: list[web.AppRunner] = []
    receivers: list[Receiver] = []

    async def start(**options: Any) -> Receiver:
        receiver = Receiver(**options)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", receiver.handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        receiver.url = f"http://127.0.0.1:{port}/hook"
        runners.append(runner)
        receivers.append(receiver)
        return receiver

    try:
        yield start
    finally:
        for receiver in receivers:
            receiver.release.set()
        for runner in runners:
            await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def wh_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allowlist": LOOPBACK_ALLOWED,
            "webhook_retry_base_seconds": 0.05,
            "webhook_retry_max_delay_seconds": 0.3,
            "webhook_poll_interval_seconds": 0.1,
            "webhook_timeout_seconds": 5.0,
            "kafka_session_timeout_seconds": 6.0,
        }
    )


@dataclass
class Api:
    url: str
    settings: Settings
    db: AsyncDatabase[Any]
    http: aiohttp.ClientSession

    async def key(self, project: str | None = None) -> tuple[str, str]:
        project = project or f"proj-{uuid.uuid4().hex[:8]}"
        key, _ = await ApiKeyStore(self.db).create(project)
        return key, project

    def client(self, key: str) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    async def call(self, method: str, path: str, key: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"}
        async with self.http.request(method, f"{self.url}{path}", headers=headers, **kw) as resp:
            return resp.status, await resp.json(content_type=None)


MakeApi = Callable[..., Awaitable[Api]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_api(wh_settings: Settings) -> AsyncIterator[MakeApi]:
    servers: list[TestServer] = []
    db = open_database(wh_settings)
    http = aiohttp.ClientSession()

    async def start(**overrides: Any) -> Api:
        s = wh_settings.model_copy(update=overrides)
        server = TestServer(create_api_app(s), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return Api(str(server.make_url("")).rstrip("/"), s, db, http)

    try:
        yield start
    finally:
        for server in servers:
            await server.close()
        await http.close()
        await close_database(db)


@pytest_asyncio.fixture(loop_scope="session")
async def api(make_api: MakeApi) -> Api:
    return await make_api()


StartNotifier = Callable[..., Awaitable[Notifier]]


@pytest_asyncio.fixture(loop_scope="session")
async def start_notifier(wh_settings: Settings) -> AsyncIterator[StartNotifier]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    dbs: list[AsyncDatabase[Any]] = []

    async def start(**overrides: Any) -> Notifier:
        s = wh_settings.model_copy(update=overrides)
        db = open_database(s)
        dbs.append(db)
        notifier = Notifier(s, db)
        await notifier.prepare()
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(notifier.run(stop))))
        return notifier

    try:
        yield start
    finally:
        for stop, _ in running:
            stop.set()
        for _, task in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        for db in dbs:
            await close_database(db)


@dataclass
class Batches:
    """Batches moved through their statuses by the real store + outbox, publishing real events."""

    settings: Settings
    store: BatchStore
    publisher: EventPublisher

    async def create(self, project: str, metadata: dict[str, str] | None = None) -> str:
        doc = new_batch_document(
            project=project, endpoint="/v1/chat/completions", input_file_id="file-notifier-test",
            input={"kind": "file", "key": "unused", "bytes": 1}, completion_window="24h", expires_in_s=86400.0,
            metadata=metadata, model="null-model",
        )
        await self.store.insert(doc)
        await self.publisher.publish_outbox(doc)
        return str(doc["_id"])

    async def advance(self, batch_id: str, statuses: Sequence[str]) -> None:
        current = (await self.store.get(batch_id) or {})["status"]
        for status in statuses:
            doc = await self.store.transition(batch_id, current, status)
            assert doc is not None, f"{batch_id}: {current} -> {status} refused"
            await self.publisher.publish_outbox(doc)
            current = status

    async def complete(self, project: str, metadata: dict[str, str] | None = None) -> str:
        batch_id = await self.create(project, metadata)
        await self.advance(batch_id, ["in_progress", "finalizing", "completed"])
        return batch_id


@pytest_asyncio.fixture(loop_scope="session")
async def batches(wh_settings: Settings) -> AsyncIterator[Batches]:
    db = open_database(wh_settings)
    await ensure_topics(wh_settings, [batch_events_topic(wh_settings)])
    producer = Producer(wh_settings, client_id="notifier-tests")
    await producer.start()
    store = BatchStore(db)
    await store.ensure_indexes()
    try:
        yield Batches(wh_settings, store, EventPublisher(store, producer, wh_settings))
    finally:
        await producer.stop()
        await close_database(db)
