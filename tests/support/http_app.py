"""The app the HTTP convention tests serve: create_service_app plus routes that fail in every way a
handler can, and `Served`, the handle on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from schemas.api_params import PageParams
from services.http.auth import ApiKeyStore, project_of
from services.http.errors import invalid_request
from services.http.openapi import operation
from services.http.params import parse_query, read_json
from services.http.service import DB_KEY, create_service_app
from services.settings import Settings


class Echo(BaseModel):
    name: str = Field(min_length=1)
    count: int = Field(1, ge=1, le=10)


class EchoReply(BaseModel):
    project: str
    name: str
    count: int


@operation("Echo a JSON body", body=Echo, responses={200: EchoReply}, query=PageParams)
async def echo(request: web.Request) -> web.Response:
    parse_query(request, PageParams)
    body = await read_json(request, Echo)
    return web.json_response(EchoReply(project=project_of(request), name=body.name, count=body.count).model_dump())


async def bad_input(request: web.Request) -> web.Response:
    raise invalid_request("That is not right.", param="thing", code="not_right")


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


async def crash_mid_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 100
    await response.prepare(request)
    await response.write(b"x" * 10)
    raise RuntimeError("storage went away")


def build_app(settings: Settings) -> web.Application:
    app = create_service_app(settings, title="test")
    app.router.add_post("/v1/echo", echo)
    app.router.add_get("/v1/bad", bad_input)
    app.router.add_get("/v1/crash", crash)
    app.router.add_get("/v1/crash-mid-stream", crash_mid_stream)
    return app


@dataclass
class Served:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    async def key(self, project: str = "proj") -> str:
        key, _ = await ApiKeyStore(self.app[DB_KEY]).create(project)
        return key

    async def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> aiohttp.ClientResponse:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        resp = await self.http.request(method, f"{self.url}{path}", headers=headers, **kw)
        await resp.read()
        return resp
