"""`GatedUpstream`: a real OpenAI-compatible chat server on loopback, used by the registry's
`gated-model` (the `upstream` engine; tests/support/models.py). It answers only as many requests as
the test allows, which makes "mid-run" a state the test controls instead of a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiohttp import web

from tests.support.servers import serve_on_loopback
from tests.support.wait import wait_for


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
        self._runner, self.url = await serve_on_loopback(app, access_log=None)
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
        await wait_for(lambda: self.received >= n, timeout_s, interval=0.02,
                       what=lambda: f"{n} upstream requests (received {self.received})")

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
