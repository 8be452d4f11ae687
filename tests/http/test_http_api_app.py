"""The api process's app: named APIs mounted on one app, or a subset (`offhours api --only`)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.api.app import APIS, create_api_app, mounters_for
from services.settings import Settings


def test_unknown_api_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown API"):
        mounters_for(["files", "nope"])
    assert mounters_for(["files"]) == (APIS["files"],)


async def test_only_files(settings: Settings) -> None:
    server = TestServer(create_api_app(settings, mounters_for(["files"])), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/openapi.json")) as resp:
            paths = (await resp.json())["paths"]
        assert "/v1/files" in paths
        assert not any(p.startswith("/v1/batches") for p in paths)
    finally:
        await server.close()
