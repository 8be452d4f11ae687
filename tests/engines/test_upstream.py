"""The upstream engine against real HTTP servers on loopback.

A small scripted aiohttp server plays an OpenAI-compatible upstream that answers what each
test tells it to (429s, 5xx, slow answers, garbage), so retry behaviour is tested against
real sockets. test_upstream_llama_server.py runs the engine against a real llama_cpp.server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from services.inference.engines.base import EngineRequest, EngineUnavailable
from services.inference.engines.managed_server import free_port
from services.inference.engines.upstream import (
    UpstreamEngine,
    backoff_delay,
    join_url,
    retry_after_seconds,
)
from services.inference.registry import RegistryError

CHAT = "/v1/chat/completions"
OK = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
      "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_join_url_accepts_base_urls_with_or_without_v1() -> None:
    assert join_url("http://h:8000", CHAT) == "http://h:8000/v1/chat/completions"
    assert join_url("http://h:8000/", CHAT) == "http://h:8000/v1/chat/completions"
    assert join_url("https://api.example.com/v1", CHAT) == "https://api.example.com/v1/chat/completions"
    assert join_url("https://gw.example.com/openai/v1/", "/v1/embeddings") == \
        "https://gw.example.com/openai/v1/embeddings"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("-3") == 0.0
    now = 1_700_000_000.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == pytest.approx(30.0)
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(5)
    for attempt in range(8):
        cap = min(4.0, 0.25 * 2**attempt)
        samples = [backoff_delay(attempt, 0.25, 4.0, rng) for _ in range(200)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > cap * 0.8  # spread over the whole interval, not a fixed delay
        assert min(samples) < cap * 0.2


def test_options_need_exactly_one_target() -> None:
    with pytest.raises(RegistryError, match="exactly one"):
        UpstreamEngine("m")
    with pytest.raises(RegistryError, match="exactly one"):
        UpstreamEngine("m", base_url="http://x", server={"preset": "vllm", "model": "m"})
    with pytest.raises(RegistryError, match="max_retry"):
        UpstreamEngine("m", base_url="http://x", max_retry=3)


Reply = Callable[[web.Request, dict[str, Any]], Any]


@dataclass
class Script:
    """What the fake upstream answers next; it records what it was sent."""

    replies: list[Reply] = field(default_factory=list)
    default: Reply | None = None
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


def reply(status: int, body: Any = None, *, headers: dict[str, str] | None = None, delay: float = 0.0,
          text: str | None = None) -> Reply:
    async def answer(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        if text is not None:
            return web.Response(status=status, text=text, headers=headers)
        return web.json_response(body if body is not None else OK, status=status, headers=headers)
    return answer


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def handle(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        script.received.append((dict(request.headers), payload))
        script.in_flight += 1
        script.max_in_flight = max(script.max_in_flight, script.in_flight)
        try:
            answer = script.replies.pop(0) if script.replies else script.default or reply(200)
            return await answer(request, payload)
        finally:
            script.in_flight -= 1

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", script
    finally:
        await runner.cleanup()


def engine_for(base_url: str, **options: Any) -> UpstreamEngine:
    options = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, **options}
    return UpstreamEngine("m", base_url=base_url, **options)


def chat(i: int = 0) -> EngineRequest:
    return EngineRequest(CHAT, {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}, f"c{i}")


async def test_success_passes_the_upstream_body_through(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    script.replies = [reply(200, headers={"x-request-id": "up-77"})]
    async with engine_for(url, api_key="sk-test", upstream_model="served-name", headers={"X-Team": "a"}) as e:
        result = await e.infer(chat())
    assert (result.status_code, result.body, result.request_id) == (200, OK, "up-77")
    headers, payload = script.received[-1]
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["X-Team"] == "a"
    assert payload["model"] == "served-name"  # rewritten for the server
    assert payload["messages"][0]["content"] == "hi 0"


async def test_429_is_retried_after_retry_after(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    rate_limited = {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit"}}
    script.replies = [reply(429, rate_limited, headers={"Retry-After": "0"}), reply(503, {"error": {}}), reply(200)]
    async with engine_for(url) as e:
        result = await e.infer(chat())
        assert result.status_code == 200
        assert e.retries == 2
    assert len(script.received) == 3


async def test_upstream_4xx_keeps_status_and_body_and_is_not_retried(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    refusal = {"error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature",
                         "code": None}}
    script.replies = [reply(422, refusal)]
    async with engine_for(url) as e:
        result = await e.infer(chat())
        assert e.retries == 0
    assert (result.status_code, result.body) == (422, refusal)
    assert len(script.received) == 1


async def test_non_json_4xx_is_wrapped_in_an_openai_error(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    script.replies = [reply(404, text="no such route")]
    async with engine_for(url) as e:
        result = await e.infer(chat())
    assert result.status_code == 404
    assert result.body["error"]["code"] == "upstream_http_404"
    assert "no such route" in result.body["error"]["message"]


async def test_a_persistent_500_becomes_the_lines_error_after_few_retries(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    crash = {"error": {"message": "handler crashed", "type": "internal_server_error"}}
    script.default = reply(500, crash)
    try:
        async with engine_for(url, server_error_retries=2) as e:
            result = await e.infer(chat())
    finally:
        script.default = None
    assert (result.status_code, result.body) == (500, crash)
    assert len(script.received) == 3  # the first try and two retries


@pytest.mark.parametrize("status", [503, 429, 502])
async def test_a_busy_answer_that_outlasts_the_retries_becomes_the_lines_error(
    upstream: tuple[str, Script], status: int
) -> None:
    url, script = upstream
    busy = {"error": {"message": "busy", "type": "server_error", "code": "overloaded"}}
    script.default = reply(status, busy, headers={"x-request-id": "up-busy"})
    try:
        async with engine_for(url, max_retries=3, server_error_retries=0) as e:
            result = await e.infer(chat())
            assert e.retries == 3  # a busy status gets the full max_retries, not server_error_retries
    finally:
        script.default = None
    assert (result.status_code, result.body, result.request_id) == (status, busy, "up-busy")
    assert len(script.received) == 4


async def test_a_request_that_always_times_out_becomes_a_504_for_its_line(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    script.default = reply(200, delay=1.0)
    try:
        async with engine_for(url, timeout_s=0.2, server_error_retries=1) as e:
            result = await e.infer(chat())
    finally:
        script.default = None
    assert result.status_code == 504
    assert result.body["error"]["code"] == "upstream_timeout"
    assert len(script.received) == 2  # a hanging request is suspect: server_error_retries, not max_retries


async def test_an_unreachable_upstream_raises_engine_unavailable() -> None:
    async with engine_for(f"http://127.0.0.1:{free_port()}", max_retries=2) as e:
        with pytest.raises(EngineUnavailable, match="3 attempts"):
            await e.infer(chat())
        assert e.retries == 2


async def test_a_slow_answer_times_out_and_is_retried(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    script.replies = [reply(200, delay=1.0), reply(200)]
    async with engine_for(url, timeout_s=0.3) as e:
        result = await e.infer(chat())
        assert result.status_code == 200
        assert e.retries == 1


async def test_a_200_that_is_not_json_is_a_located_502(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    script.replies = [reply(200, text="<html>proxy page</html>")]
    async with engine_for(url) as e:
        result = await e.infer(chat())
    assert result.status_code == 502
    assert result.body["error"]["code"] == "upstream_invalid_response"


async def test_concurrency_is_limited(upstream: tuple[str, Script]) -> None:
    url, script = upstream
    script.default = reply(200, delay=0.05)
    script.max_in_flight = 0
    try:
        async with engine_for(url, max_concurrency=3) as e:
            results = await asyncio.gather(*(e.infer(chat(i)) for i in range(12)))
    finally:
        script.default = None
    assert all(r.status_code == 200 for r in results)
    assert script.max_in_flight == 3
