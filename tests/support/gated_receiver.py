"""A webhook receiver that counts the requests it holds at once, across every path (endpoint) it serves.

All its URLs share one host and port, so it stands for one receiving host behind many endpoints.
Requests are held until `open()`; `in_flight` and `max_in_flight` say how many were held together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.servers import serve_on_loopback


@dataclass
class GatedReceiver:
    base_url: str = ""
    in_flight: int = 0
    max_in_flight: int = 0
    answered: int = 0
    paths: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def open(self) -> None:
        """Answer every held request and every later one at once."""
        self.gate.set()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.paths.append(request.path)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        self.answered += 1
        return web.Response(status=200, text="ok")


@contextlib.asynccontextmanager
async def gated_receiver() -> AsyncIterator[GatedReceiver]:
    receiver = GatedReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner, receiver.base_url = await serve_on_loopback(app, handle_signals=False, shutdown_timeout=0.5)
    try:
        yield receiver
    finally:
        receiver.open()
        await runner.cleanup()
