"""/healthz, /metrics, /openapi.json and the structured access log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.http.health import add_health_check
from services.http.logging_setup import ACCESS_LOGGER, JsonFormatter, configure_logging
from services.settings import Settings
from tests.support.http_app import Served, build_app
from tests.support.wait import wait_for


async def test_healthz_checks_mongo_and_s3(served: Served) -> None:
    resp = await served.call("GET", "/healthz")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ok"
    assert {"mongo", "s3"} <= set(body["checks"]) and all(c["ok"] for c in body["checks"].values())


async def test_healthz_is_503_when_a_dependency_is_down(settings: Settings) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]

    async def dead_dependency() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", dead_port)
        writer.close()

    app = build_app(settings)
    add_health_check(app, "queue", dead_dependency)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/healthz")) as resp:
            body = await resp.json()
        assert resp.status == 503 and body["status"] == "unavailable"
        assert body["checks"]["mongo"]["ok"] and not body["checks"]["queue"]["ok"]
        assert body["failing"] == ["queue"] and body["checks"]["queue"] == {"ok": False, "status": "failing"}
    finally:
        await server.close()


async def test_metrics_count_by_route_template(served: Served) -> None:
    key = await served.key()
    for _ in range(3):
        await served.call("GET", "/v1/bad", key)
    await served.call("GET", "/v1/nowhere/abc123", key)
    resp = await served.call("GET", "/metrics")
    text = (await resp.read()).decode()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    assert 'offhours_http_requests_total{method="GET",route="/v1/bad",status="400"} 3.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "abc123" not in text  # raw paths never become labels
    assert "offhours_http_request_duration_seconds_bucket" in text


async def test_openapi_document(served: Served) -> None:
    resp = await served.call("GET", "/openapi.json")
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    op = doc["paths"]["/v1/echo"]["post"]
    assert op["security"] == [{"bearerAuth": []}]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Echo"}
    assert {p["name"] for p in op["parameters"]} == {"after", "limit", "order"}
    limit = next(p for p in op["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 100)
    # Undeclared routes (operational ones, test helpers) are left out.
    assert "/v1/bad" not in doc["paths"]
    # Every reference resolves.
    refs = {v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/components/schemas/")}
    assert refs and all(r.rsplit("/", 1)[1] in doc["components"]["schemas"] for r in refs)
    assert "ErrorBody" in doc["components"]["schemas"]


def _walk(node: object):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)
    else:
        yield node


async def test_access_log_is_structured(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    key = await served.key("logged")
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        resp = await served.call("GET", "/v1/bad", key, headers={"x-request-id": "trace-1"})
        # The server logs after the last byte is sent, which may be after the client has it.
        def logged() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == ACCESS_LOGGER and getattr(r, "request_id", None) == "trace-1"]

        records = await wait_for(logged, 5, interval=0.01, what="the access log record")
    assert resp.status == 400
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["route"] == "/v1/bad" and line["status"] == 400 and line["project"] == "logged"
    assert line["method"] == "GET" and line["duration_ms"] >= 0 and line["level"] == "info"
    assert key not in json.dumps(line)


def test_configure_logging_writes_json_lines() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(Settings(log_json=True, log_level="DEBUG"), stream=stream)
        logging.getLogger("offhours.test").info("hello %s", "world", extra={"file_id": "file-1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("offhours.test").exception("failed")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["msg"], first["file_id"], first["level"], first["logger"]) == ("hello world", "file-1", "info", "offhours.test")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]

