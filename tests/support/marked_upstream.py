"""`MarkedUpstream`: a real OpenAI-compatible chat server on loopback whose answer to each request
depends on a marker in the request's custom id, for testing how the worker treats failing lines and an
unavailable engine.

The line's custom id travels in the message content (`tests/support/lines.py` `chat_line` writes
`hello <custom_id>`), so the server can say which line a request is and count, per custom id, how
often it was received and how often answered — "no line answered twice" is then a fact the server
saw, not one inferred from the output file.

Markers in the custom id:
- `fail-503`: always answers 503 with `POISON_BODY`, however often it is retried;
- `hold`: waits until the test calls `release()`.
While `down` is set, every request's connection is dropped without an answer (a server that went
away: the client sees the connection close, as when an engine crashes or restarts).
`write_models_file` registers `marked-model`, the `upstream` engine pointed at this server.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web

from services.inference.registry import DEFAULT_MODELS_FILE
from tests.support.lines import CHAT
from tests.support.servers import serve_on_loopback
from tests.support.wait import wait_for

MARKED = "marked-model"
POISON_BODY = {"error": {"message": "this request always overloads the server", "type": "server_error",
                         "param": None, "code": "poisoned"}}


class MarkedUpstream:
    def __init__(self) -> None:
        self.received: Counter[str] = Counter()  # custom id -> requests received
        self.answered: Counter[str] = Counter()  # custom id -> 200 answers sent
        self.down = False
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> MarkedUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, self.url = await serve_on_loopback(app, access_log=None, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        self._released.set()

    async def wait_received(self, custom_id: str, n: int = 1, timeout_s: float = 60) -> None:
        await wait_for(lambda: self.received[custom_id] >= n, timeout_s, interval=0.02,
                       what=lambda: f"{n} request(s) for {custom_id} (received {self.received[custom_id]})")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        custom_id = str(body["messages"][-1]["content"]).removeprefix("hello ")
        self.received[custom_id] += 1
        if "hold" in custom_id and not self.down:
            await self._released.wait()
        if self.down:
            return self._drop(request)
        if "fail-503" in custom_id:
            return web.json_response(POISON_BODY, status=503)
        self.answered[custom_id] += 1
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer to {custom_id}"},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        # Closing the socket under the request is what a crashed engine looks like to its client.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)


def write_models_file(path: Path, url: str, *, chunk_lines: int, max_concurrency: int = 4,
                      **options: Any) -> Path:
    """The default registry plus `marked-model` (the upstream engine at `url`, quick retries)."""
    with open(DEFAULT_MODELS_FILE, "rb") as f:
        registry = tomllib.load(f)
    registry["models"][MARKED] = {
        "engine": "upstream", "base_url": url, "endpoints": [CHAT], "max_concurrency": max_concurrency,
        "chunk_lines": chunk_lines, "max_retries": 1, "server_error_retries": 1, "backoff_base_s": 0.01,
        "backoff_max_s": 0.05, "description": "test upstream that answers by marker", **options,
    }
    path.write_text(tomli_w.dumps(registry))
    return path
