"""The whole service as separate processes on the session's real servers, driven by the official SDK.

- `ServiceStack`: `offhours api`, `offhours dispatcher` and `offhours worker --model ...` as child
  processes configured only through the environment (exactly what a deployment runs), so tests can
  SIGKILL any of them.
- `GatedUpstream`: a real OpenAI-compatible chat server on loopback, used by the registry's
  `gated-model` (the `upstream` engine). It answers only as many requests as the test allows, which
  makes "mid-run" a state the test controls instead of a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import tomli_w
from aiohttp import web

from services.api.process import ApiProcess
from services.http.auth import ApiKeyStore
from services.inference.registry import DEFAULT_MODELS_FILE
from services.runtime.child_process import ServiceProcess
from services.settings import Settings
from services.state.ledger import ChunkLedger
from services.stores.mongo import close_database, open_database

CHAT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
GATED = "gated-model"


def chat_line(custom_id: str, model: str = "null-model", url: str = CHAT, **body: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": f"hello {custom_id}"}], **body}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def jsonl(lines: Iterable[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def fast_settings(settings: Settings, **overrides: Any) -> Settings:
    """Short production timers, so tests do not wait on them (none of them is asserted on)."""
    values: dict[str, Any] = {
        "sweep_interval_seconds": 0.3, "progress_interval_seconds": 0.2, "outbox_stale_seconds": 1.0,
        "worker_heartbeat_interval_seconds": 1.0, "kafka_session_timeout_seconds": 6.0,
        "worker_shutdown_grace_seconds": 5.0, "log_json": False,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


def write_models_file(path: Path, upstream_url: str | None, **chunk_lines: int) -> Path:
    """The default registry plus `gated-model` (pointing at `upstream_url`), with chunk sizes for tests."""
    with open(DEFAULT_MODELS_FILE, "rb") as f:
        registry = tomllib.load(f)
    models = registry["models"]
    if upstream_url is not None:
        models[GATED] = {
            "engine": "upstream", "base_url": upstream_url, "endpoints": [CHAT], "max_concurrency": 4,
            "max_retries": 0, "chunk_lines": 2, "description": "test upstream the test releases request by request",
        }
    for name, lines in chunk_lines.items():
        models[name.replace("_", "-")]["chunk_lines"] = lines
    path.write_text(tomli_w.dumps(registry))
    return path


class GatedUpstream:
    """An OpenAI-compatible `/v1/chat/completions` that answers when the test says so."""

    def __init__(self) -> None:
        self.received = 0
        self.answered = 0
        self._allowance = 0
        self._open = False
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> GatedUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        await self.release_all()
        if self._runner is not None:
            await self._runner.cleanup()

    async def allow(self, n: int) -> None:
        async with self._changed:
            self._allowance += n
            self._changed.notify_all()

    async def release_all(self) -> None:
        async with self._changed:
            self._open = True
            self._changed.notify_all()

    async def wait_received(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.received < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"upstream received {self.received} requests, expected {n}")
            await asyncio.sleep(0.02)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received += 1
        async with self._changed:
            await self._changed.wait_for(lambda: self._open or self._allowance > 0)
            if not self._open:
                self._allowance -= 1
        self.answered += 1
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "gated answer"},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        })


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


async def upload(client: openai.AsyncOpenAI, data: bytes, name: str = "input.jsonl") -> str:
    return (await client.files.create(file=(name, data), purpose="batch")).id


async def wait_status(client: openai.AsyncOpenAI, batch_id: str, statuses: Sequence[str] = TERMINAL,
                      timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s}s")
        await asyncio.sleep(0.1)


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
