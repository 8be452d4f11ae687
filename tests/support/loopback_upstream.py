"""`LoopbackUpstream`: a real OpenAI-compatible server on loopback that a shared deployment stands in for.

- `/v1/chat/completions` always; `/v1/responses` only with `serve_responses` (a server without the
  Responses API answers it 404, as llama_cpp.server does). Every request is recorded by path.
- `capacity`: more requests in flight than this are refused with 429, as a deployment shedding load
  does when live users and a batch together exceed it (None: never refused). Each request takes
  `work_s` of server time, so requests overlap the way generation makes them overlap, and a refusal
  `refuse_s` (a client that does not back off keeps the server busy refusing it).
- It counts requests in flight and the most it saw at once; `mark()` starts a new count, so a test can
  look at the concurrency after a warm-up only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from tests.support.servers import serve_on_loopback


class LoopbackUpstream:
    def __init__(self, *, capacity: int | None = None, work_s: float = 0.0, refuse_s: float = 0.0,
                 serve_responses: bool = False) -> None:
        self.capacity = capacity
        self.refuse_s = refuse_s
        self.work_s = work_s
        self.serve_responses = serve_responses
        self.received: list[tuple[str, dict[str, Any]]] = []  # (path, body)
        self.in_flight = 0
        self.max_in_flight = 0  # since the last mark()
        self.refused = 0
        self.answered = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> LoopbackUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        self._runner, base = await serve_on_loopback(app, access_log=None, shutdown_timeout=1.0)
        self.url = f"{base}/v1"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def mark(self) -> None:
        self.max_in_flight = self.in_flight

    def paths(self) -> list[str]:
        return [path for path, _ in self.received]

    async def _serve(self, request: web.Request, answer: Any) -> web.Response:
        body = await request.json()
        self.received.append((request.path, body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.capacity is not None and self.in_flight > self.capacity:
                self.refused += 1
                if self.refuse_s:
                    await asyncio.sleep(self.refuse_s)
                return web.json_response({"error": {"message": "server busy", "type": "rate_limit_error",
                                                    "param": None, "code": "busy"}}, status=429)
            if self.work_s:
                await asyncio.sleep(self.work_s)  # the server's generation time
            self.answered += 1
            return web.json_response(answer(body))
        finally:
            self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.Response:
        def answer(body: dict[str, Any]) -> dict[str, Any]:
            last = body["messages"][-1]["content"]
            cut = body.get("max_tokens") == 1
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"chat answer to {last}"},
                             "finish_reason": "length" if cut else "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
            }
        return await self._serve(request, answer)

    async def _responses(self, request: web.Request) -> web.Response:
        if not self.serve_responses:
            self.received.append((request.path, await request.json()))
            return web.json_response({"detail": "Not Found"}, status=404)

        def answer(body: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
                "status": "completed", "model": body.get("model"), "native": True,
                "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": "native answer", "annotations": []}]}],
                "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
            }
        return await self._serve(request, answer)
