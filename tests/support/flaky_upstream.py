"""`FlakyUpstream`: a real OpenAI-compatible chat server on loopback that answers some lines with
a transient 503 until the test says it has recovered, and refuses others with a 400 for good.

A line is named by its message content (the run-batch tests put the custom id there), so the server
counts, per line, how often it was asked: "a refused line is never retried" is then a fact the
server saw. Register it with tests/support/models.py `write_models_file(path, server.url)`: the
`gated-model` entry is the `upstream` engine with `max_retries = 0`, so a 503 becomes the line's
error at once instead of being retried inside the engine.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable

from aiohttp import web

from tests.support.servers import serve_on_loopback

OVERLOADED = {"error": {"message": "the server is overloaded, try again later", "type": "server_error",
                        "param": None, "code": "overloaded"}}
REFUSED = {"error": {"message": "this request is not acceptable", "type": "invalid_request_error",
                     "param": "messages", "code": "invalid_request"}}


class FlakyUpstream:
    def __init__(self, *, failing: Iterable[str] = (), refused: Iterable[str] = ()) -> None:
        self.failing = set(failing)  # answered 503 until recover()
        self.refused = set(refused)  # answered 400, always
        self.received: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FlakyUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, self.url = await serve_on_loopback(app, access_log=None, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def recover(self) -> None:
        self.failing.clear()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = str(body["messages"][-1]["content"])
        self.received[name] += 1
        if name in self.refused:
            return web.json_response(REFUSED, status=400)
        if name in self.failing:
            return web.json_response(OVERLOADED, status=503)
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer to {name}"},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })
