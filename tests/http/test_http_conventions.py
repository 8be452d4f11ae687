"""Errors, request ids, JSON bodies: the conventions every offhours HTTP service shares."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest

from services.http.request_id import REQUEST_ID_HEADER
from tests.support.http_app import Served

ERROR_KEYS = {"message", "type", "param", "code"}


async def error_of(resp) -> dict:  # type: ignore[no-untyped-def]
    body = json.loads(await resp.read())
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert resp.headers["Content-Type"].startswith("application/json")
    return body["error"]


async def test_api_error_is_openai_shaped(served: Served) -> None:
    resp = await served.call("GET", "/v1/bad", await served.key())
    assert resp.status == 400
    assert await error_of(resp) == {"message": "That is not right.", "type": "invalid_request_error",
                                    "param": "thing", "code": "not_right"}


async def test_unexpected_exception_is_500_without_details(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="services.http.errors"):
        resp = await served.call("GET", "/v1/crash", await served.key())
    assert resp.status == 500
    err = await error_of(resp)
    assert err["type"] == "server_error"
    assert "secret internal detail" not in err["message"] and "Traceback" not in err["message"]
    # The message names the request id, which is how the logged traceback is found.
    rid = resp.headers[REQUEST_ID_HEADER]
    assert rid in err["message"]
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged and logged[0].exc_info is not None


async def test_error_after_headers_drops_the_connection(served: Served) -> None:
    """Once a streamed body has started, the only honest signal is a short body, not a 500 page."""
    with pytest.raises(aiohttp.ClientPayloadError):
        await served.call("GET", "/v1/crash-mid-stream", await served.key())


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nowhere", 404, "unknown_url"),
    ("GET", "/v1/nowhere", 404, "unknown_url"),
    ("DELETE", "/v1/echo", 405, "method_not_allowed"),
    ("POST", "/healthz", 405, "method_not_allowed"),
])
async def test_router_errors_are_openai_shaped(served: Served, method: str, path: str, status: int, code: str) -> None:
    resp = await served.call(method, path, await served.key())
    assert resp.status == status
    assert (await error_of(resp))["code"] == code
    if status == 405:
        assert "Allow" in resp.headers


async def test_unknown_v1_route_without_key_is_401(served: Served) -> None:
    """Every /v1 path needs a key, so probing routes without one learns nothing."""
    resp = await served.call("GET", "/v1/nowhere")
    assert resp.status == 401


@pytest.mark.parametrize(("body", "param", "code"), [
    (b"", None, "invalid_json"),
    (b"{not json", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_json"),
    (b"{}", "name", "missing_required_parameter"),
    (b'{"name": ""}', "name", "invalid_value"),
    (b'{"name": "a", "count": 11}', "count", "invalid_value"),
    (b'{"name": "a", "count": "many"}', "count", "invalid_value"),
])
async def test_bad_json_bodies(served: Served, body: bytes, param: str | None, code: str) -> None:
    resp = await served.call("POST", "/v1/echo", await served.key(), data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    err = await error_of(resp)
    assert (err["param"], err["code"]) == (param, code)


async def test_json_body_over_the_limit_is_413(served: Served) -> None:
    big = json.dumps({"name": "x" * (2 * 1024 * 1024)}).encode()
    resp = await served.call("POST", "/v1/echo", await served.key(), data=big,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await error_of(resp))["code"] == "request_too_large"


async def test_good_request_resolves_the_project(served: Served) -> None:
    resp = await served.call("POST", "/v1/echo?limit=5", await served.key("acme"), json={"name": "n", "count": 2})
    assert resp.status == 200
    assert await resp.json() == {"project": "acme", "name": "n", "count": 2}


async def test_request_id_on_every_response(served: Served) -> None:
    seen = set()
    for method, path in [("GET", "/healthz"), ("GET", "/nowhere"), ("GET", "/v1/bad"), ("GET", "/v1/crash")]:
        resp = await served.call(method, path)
        rid = resp.headers[REQUEST_ID_HEADER]
        assert rid.startswith("req_")
        seen.add(rid)
    assert len(seen) == 4


async def test_incoming_request_id_is_honoured_when_sane(served: Served) -> None:
    resp = await served.call("GET", "/healthz", headers={REQUEST_ID_HEADER: "trace-abc.123"})
    assert resp.headers[REQUEST_ID_HEADER] == "trace-abc.123"
    resp = await served.call("GET", "/healthz", headers={REQUEST_ID_HEADER: "x" * 500})
    assert resp.headers[REQUEST_ID_HEADER].startswith("req_")
    resp = await served.call("GET", "/healthz", headers={REQUEST_ID_HEADER: "bad id\twith spaces"})
    assert resp.headers[REQUEST_ID_HEADER].startswith("req_")
