"""The whole service as separate processes on the session's real servers, driven by the official SDK.

`ServiceStack` runs `offhours api`, `offhours dispatcher` and `offhours worker --model ...` as child
processes configured only through the environment (exactly what a deployment runs), so tests can
SIGKILL any of them. The functions below are what a client of it does: upload, wait, download, check.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson

from services.api.process import ApiProcess
from services.http.auth import ApiKeyStore
from services.runtime.child_process import ServiceProcess
from services.settings import Settings
from services.state.ledger import ChunkLedger
from services.stores.mongo import close_database, open_database
from tests.support.lines import TERMINAL
from tests.support.wait import wait_for


@dataclass
class ServiceStack:
    settings: Settings
    logs: Path
    api: ApiProcess | None = None
    dispatcher: ServiceProcess | None = None
    workers: list[ServiceProcess] = field(default_factory=list)
    db: Any = None
    _clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def ledger(self) -> ChunkLedger:
        return ChunkLedger(self.db)

    async def start(self, workers: Sequence[str] = ("null-model",)) -> ServiceStack:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.db = open_database(self.settings)
        self.api = ApiProcess(self.settings, log_file=self.logs / "api.log")
        self.dispatcher = ServiceProcess.dispatcher(self.settings, log_file=self.logs / "dispatcher.log")
        for model in workers:
            self.add_worker(model)
        await asyncio.gather(self.api.start(), self.dispatcher.spawn().wait_healthy(),
                             *(w.spawn().wait_healthy() for w in self.workers))
        return self

    def add_worker(self, model: str) -> ServiceProcess:
        n = sum(1 for w in self.workers if w.command[2] == model)
        worker = ServiceProcess.worker(self.settings, model, log_file=self.logs / f"worker-{model}-{n}.log")
        self.workers.append(worker)
        return worker

    async def start_worker(self, model: str) -> ServiceProcess:
        worker = self.add_worker(model)
        await worker.start()
        return worker

    async def restart(self, proc: ServiceProcess) -> None:
        proc.kill()
        await proc.start()

    async def client(self, project: str | None = None) -> openai.AsyncOpenAI:
        key, _ = await ApiKeyStore(self.db).create(project or f"proj-{uuid.uuid4().hex[:8]}")
        assert self.api is not None
        client = openai.AsyncOpenAI(base_url=f"{self.api.base_url}/v1", api_key=key, max_retries=0, timeout=60)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        procs = [p for p in (*self.workers, self.dispatcher) if p is not None]
        await asyncio.gather(*(asyncio.to_thread(p.stop, 15) for p in procs))
        if self.api is not None:
            await asyncio.to_thread(self.api.stop, 15)
        if self.db is not None:
            await close_database(self.db)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {path.name}\n" + "\n".join(text))
        return "\n".join(out)


# The `make_stack` fixture: `await make_stack(workers=(...), chunk_lines={...}, **settings_overrides)`.
MakeStack = Callable[..., Awaitable[ServiceStack]]


async def upload(client: openai.AsyncOpenAI, data: bytes, name: str = "input.jsonl") -> str:
    return (await client.files.create(file=(name, data), purpose="batch")).id


async def wait_status(client: openai.AsyncOpenAI, batch_id: str, statuses: Sequence[str] = TERMINAL,
                      timeout_s: float = 120) -> Any:
    seen: dict[str, Any] = {}

    async def reached() -> Any:
        batch = seen["batch"] = await client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return await wait_for(reached, timeout_s, interval=0.1, what=lambda: (
        f"batch {batch_id} to be {'/'.join(statuses)} (still {getattr(seen.get('batch'), 'status', None)})"))


async def download_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [orjson.loads(x) for x in content.content.splitlines() if x.strip()]


def assert_exactly_once(output: list[dict[str, Any]], errors: list[dict[str, Any]], expected: Iterable[str]) -> None:
    """Every input custom_id appears exactly once across the output and error files (invariant 1)."""
    seen = [line["custom_id"] for line in output] + [line["custom_id"] for line in errors]
    expected = list(expected)
    dupes = [c for c, n in Counter(seen).items() if n > 1]
    assert not dupes, f"custom_ids seen more than once: {sorted(dupes)[:10]}"
    assert sorted(seen) == sorted(expected), (
        f"missing {sorted(set(expected) - set(seen))[:10]}, unexpected {sorted(set(seen) - set(expected))[:10]}"
    )


# Crash and cancel tests reason about a batch whose every chunk is in Kafka at once (admission would
# otherwise keep most of a small batch in the ledger): `scheduling_window_margin_chunks` above their size.
WHOLE_BATCH = 64
