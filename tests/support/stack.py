"""An in-process dispatcher + worker on the session's real Kafka/MongoDB/S3, for flow tests without HTTP.

Batches are created the way the batches service creates them (a document with its `batch.created`
outbox entry, then the outbox published), so the dispatcher sees exactly what it sees in production.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from events.bus import Producer
from services.dispatcher.service import Dispatcher
from services.inference.registry import get_model
from services.settings import Settings
from services.state.batches import BatchStore, new_batch_document
from services.state.files import FileStore, new_file_id, object_key
from services.state.ledger import ChunkLedger
from services.state.outbox import EventPublisher
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore
from services.worker.heartbeat import Heartbeat
from services.worker.service import Worker
from tests.support.lines import CHAT, TERMINAL
from tests.support.settings import fast_settings
from tests.support.wait import wait_for


@dataclass
class Stack:
    settings: Settings
    db: Any
    store: ObjectStore
    producer: Producer
    batches: BatchStore
    ledger: ChunkLedger
    files: FileStore
    publisher: EventPublisher
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stops: list[asyncio.Event] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    dispatcher: Dispatcher | None = None

    async def upload(self, lines: Sequence[bytes], project: str = "p1") -> str:
        data = b"\n".join(lines) + b"\n"
        file_id = new_file_id()
        await self.store.put_bytes(object_key(file_id), data)
        await self.files.register_existing(project, object_key(file_id), "in.jsonl", "batch", len(data),
                                           file_id=file_id)
        return file_id

    async def create_batch(self, file_id: str, *, project: str = "p1", model: str | None = "null-model",
                           endpoint: str = CHAT, window_s: float = 86400.0) -> str:
        record = await self.files.get(project, file_id)
        assert record is not None
        doc = new_batch_document(project=project, endpoint=endpoint, input_file_id=file_id,
                                 input={"kind": "file", "key": record.key, "bytes": record.bytes},
                                 completion_window="24h", expires_in_s=window_s, model=model)
        await self.batches.insert(doc)
        await self.publisher.publish_outbox(doc)
        return str(doc["_id"])

    async def wait_status(self, batch_id: str, statuses: Sequence[str] = TERMINAL, timeout_s: float = 60) -> dict:
        seen: dict[str, Any] = {}

        async def reached() -> dict | None:
            doc = seen["doc"] = await self.batches.get(batch_id)
            return doc if doc is not None and doc["status"] in statuses else None

        return await wait_for(reached, timeout_s, what=lambda: (
            f"batch {batch_id} to be {'/'.join(statuses)} (still {(seen.get('doc') or {}).get('status')})"))

    async def lines_of(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        data = await self.store.get_bytes(object_key(file_id))
        return [orjson.loads(x) for x in data.splitlines() if x.strip()]

    async def start_worker(self, model: str = "null-model", concurrency: int | None = None) -> Worker:
        engine = get_model(model, self.settings.models_file).create_engine()
        await engine.start()
        worker = Worker(self.settings, engine, db=self.db, store=self.store, producer=self.producer,
                        worker_id=f"test-{model}-{len(self.workers)}", concurrency=concurrency)
        await worker.prepare()
        await Heartbeat(self.db, worker_id=worker.worker_id, model=model, endpoints=engine.endpoints,
                        interval_s=60).beat()
        self._spawn(worker.run)
        self.workers.append(worker)
        return worker

    async def start_dispatcher(self) -> Dispatcher:
        self.dispatcher = Dispatcher(self.settings, db=self.db, store=self.store, producer=self.producer,
                                     files=self.files)
        await self.dispatcher.prepare()
        self._spawn(self.dispatcher.run)
        return self.dispatcher

    def _spawn(self, run: Any) -> None:
        stop = asyncio.Event()
        self.stops.append(stop)
        self.tasks.append(asyncio.create_task(run(stop)))

    async def close(self) -> None:
        for stop in self.stops:
            stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)
        for worker in self.workers:
            await worker.engine.close()
        for task in self.tasks:  # a task that raised must fail the test, not vanish
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def open_stack(settings: Settings) -> AsyncIterator[Stack]:
    """Connections for one test; dispatchers and workers started on it are stopped on exit."""
    s = fast_settings(settings)
    db = open_database(s)
    store = await ObjectStore(s).open()
    producer = Producer(s)
    await producer.start()
    batches = BatchStore(db)
    await batches.ensure_indexes()
    st = Stack(settings=s, db=db, store=store, producer=producer, batches=batches, ledger=ChunkLedger(db),
               files=FileStore(db, store), publisher=EventPublisher(batches, producer, s))
    try:
        yield st
    finally:
        try:
            await st.close()
        finally:
            await producer.stop()
            await store.close()
            await close_database(db)
