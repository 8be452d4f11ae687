"""What the notifier tests drive and watch: webhook receivers on loopback, batches moved through their
statuses by the real store and outbox, the SDK's signature check, and the events example program."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
from aiohttp import web

from events.bus import Producer
from events.topics import batch_events_topic, ensure_topics
from services.notifier.service import Notifier
from services.settings import Settings
from services.state.batches import BatchStore, new_batch_document
from services.state.outbox import EventPublisher
from services.stores.mongo import close_database, open_database
from tests.support.servers import serve_on_loopback
from tests.support.wait import wait_for

LOOPBACK_ALLOWED = ["127.0.0.1/32"]
# The loopback allowlist and retry timings short enough for a test.
WEBHOOK_TEST_SETTINGS: dict[str, Any] = {
    "webhook_allowlist": LOOPBACK_ALLOWED,
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_delay_seconds": 0.3,
    "webhook_poll_interval_seconds": 0.1,
    "webhook_timeout_seconds": 5.0,
    "kafka_session_timeout_seconds": 6.0,
}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "consume_events.py"


def unwrap(request: Any, secret: str) -> Any:
    """What a receiver does: `openai.OpenAI(webhook_secret=...).webhooks.unwrap(body, headers)`."""
    return openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(request.body, request.headers)


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
        """The requests so far, once there are at least `n`."""
        await wait_for(lambda: len(self.requests) >= n, timeout_s,
                       what=lambda: f"{n} requests at {self.url} (got {len(self.requests)})")
        return self.requests


MakeReceiver = Callable[..., Awaitable[Receiver]]
# The `start_notifier` fixture: `await start_notifier(**settings_overrides)` runs the notifier loops in-process.
StartNotifier = Callable[..., Awaitable[Notifier]]


@contextlib.asynccontextmanager
async def serving_receivers() -> AsyncIterator[MakeReceiver]:
    """Yields `start(**receiver_fields)`, which serves a new Receiver; all are released and stopped on exit."""
    runners: list[web.AppRunner] = []
    receivers: list[Receiver] = []

    async def start(**options: Any) -> Receiver:
        receiver = Receiver(**options)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", receiver.handle)
        runner, base = await serve_on_loopback(app, handle_signals=False, shutdown_timeout=0.5)
        receiver.url = f"{base}/hook"
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


@contextlib.asynccontextmanager
async def open_batches(settings: Settings) -> AsyncIterator[Batches]:
    db = open_database(settings)
    await ensure_topics(settings, [batch_events_topic(settings)])
    producer = Producer(settings, client_id="notifier-tests")
    await producer.start()
    store = BatchStore(db)
    await store.ensure_indexes()
    try:
        yield Batches(settings, store, EventPublisher(store, producer, settings))
    finally:
        await producer.stop()
        await close_database(db)


async def run_example(settings: Settings, *args: str, timeout_s: float = 120) -> tuple[list[dict[str, Any]], str]:
    """Run examples/consume_events.py as a separate process, as a user would; its JSON lines and its stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--bootstrap", settings.kafka_bootstrap_servers,
        "--topic", batch_events_topic(settings), "--group", f"example-{uuid.uuid4().hex[:8]}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(line) for line in out.splitlines() if line.strip()], err.decode()
