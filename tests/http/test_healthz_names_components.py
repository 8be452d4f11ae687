"""`/healthz` names the failing component and keeps the backend's error text (hosts, addresses) in the log."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from services.http.health import add_health_check
from services.runtime.backends import open_backends
from services.runtime.ops import OpsServer, create_ops_app
from services.settings import Settings
from services.stores.s3 import ObjectStore
from tests.support.http_app import build_app


def _dead_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def test_api_healthz_names_the_failing_check_without_its_error_text(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = _dead_port()

    async def queue() -> None:  # fails at once, with the address in its message
        _, writer = await asyncio.open_connection("127.0.0.1", dead)
        writer.close()

    app = build_app(settings)
    add_health_check(app, "queue", queue)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        with caplog.at_level(logging.WARNING, logger="services.http.health"):
            status, text = await _get(str(server.make_url("/healthz")))
    finally:
        await server.close()
    assert status == 503
    assert str(dead) not in text and "Connect" not in text and "refused" not in text.lower()
    body = orjson.loads(text)
    assert body["status"] == "unavailable" and body["failing"] == ["queue"]
    assert body["checks"]["queue"] == {"ok": False, "status": "failing"}
    assert body["checks"]["mongo"]["ok"] and body["checks"]["mongo"]["status"] == "ok"
    logged = [r.getMessage() for r in caplog.records if r.name == "services.http.health"]
    assert any(m.startswith("health check queue failing: ") and str(dead) in m for m in logged), logged


async def test_ops_healthz_names_a_down_s3_without_its_address(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = _dead_port()
    gone = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{dead}"})
    async with open_backends(settings, client_id="healthz-test") as backends, ObjectStore(gone) as down:
        # The real MongoDB, and an S3 client whose server is not there: what a worker sees when S3 dies.
        checks = dataclasses.replace(backends, store=down).health_checks()
        async with OpsServer(create_ops_app(checks), "127.0.0.1", 0) as ops:
            with caplog.at_level(logging.WARNING, logger="services.http.health"):
                status, text = await _get(f"http://127.0.0.1:{ops.port}/healthz")
    assert status == 503
    assert str(dead) not in text and "127.0.0.1" not in text and settings.s3_bucket not in text
    body = orjson.loads(text)
    assert body["failing"] == ["s3"]
    assert body["checks"]["s3"] == {"ok": False, "status": "failing"}
    assert body["checks"]["mongo"]["ok"]
    assert any(r.getMessage().startswith("health check s3 failing: ") for r in caplog.records)
