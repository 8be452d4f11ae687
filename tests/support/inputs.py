"""A loopback HTTP server for batch input URLs, and URL batches created the way the batches service does.

`InputServer` serves:
- `/input.jsonl`: `body` (the test may change it), every GET counted in `gets`;
- `/drip`: a byte every `drip_interval_s`, for good (a slow-drip input), open requests in `dripping`;
- `/hold`: nothing until `release()`, then 404 (a handler the test keeps in flight), requests in `held`;
- `/redirect?to=<url>`: 302 to `to`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.state.batches import new_batch_document
from tests.support.lines import CHAT
from tests.support.servers import serve_on_loopback
from tests.support.stack import Stack


class InputServer:
    def __init__(self, body: bytes = b"", drip_interval_s: float = 0.5) -> None:
        self.body = body
        self.drip_interval_s = drip_interval_s
        self.gets = 0
        self.dripping = 0
        self.held = 0
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> InputServer:
        app = web.Application()
        app.router.add_get("/input.jsonl", self._input)
        app.router.add_get("/drip", self._drip)
        app.router.add_get("/hold", self._hold)
        app.router.add_get("/redirect", self._redirect)
        self._runner, base = await serve_on_loopback(app, access_log=None, shutdown_timeout=0.1)
        self.port = int(base.rsplit(":", 1)[1])
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        self._released.set()

    async def _input(self, request: web.Request) -> web.Response:
        self.gets += 1
        return web.Response(body=self.body, content_type="application/jsonl")

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        self.dripping += 1
        try:
            while True:
                await response.write(b" ")
                await asyncio.sleep(self.drip_interval_s)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.dripping -= 1
        return response

    async def _hold(self, request: web.Request) -> web.Response:
        self.held += 1
        await self._released.wait()
        return web.Response(status=404)

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])


async def create_url_batch(stack: Stack, url: str, *, project: str = "p1", model: str | None = None,
                           batch_id: str | None = None) -> str:
    """A batch whose input is `url`, its `batch.created` published (model None: the lines name it)."""
    doc = new_batch_document(project=project, endpoint=CHAT, input_file_id=url, input={"kind": "url", "url": url},
                             completion_window="24h", expires_in_s=86400.0, model=model, batch_id=batch_id)
    await stack.batches.insert(doc)
    await stack.publisher.publish_outbox(doc)
    return str(doc["_id"])
