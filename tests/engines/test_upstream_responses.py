"""The upstream engine and `/v1/responses`: passed through to a server that serves it, translated to chat
for one that does not; and the engine's in-flight limit giving way to a server that sheds load (AIMD).

All against real loopback servers (tests/support/loopback_upstream.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from openai.types.responses import Response as SdkResponse

from schemas.inference import RESPONSES
from services.inference.engines.base import EngineRequest
from services.inference.engines.upstream import UpstreamEngine
from tests.support.loopback_upstream import LoopbackUpstream

CHAT_PATH = "/v1/chat/completions"


@pytest_asyncio.fixture(loop_scope="session")
async def plain() -> AsyncIterator[LoopbackUpstream]:
    server = await LoopbackUpstream().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def native() -> AsyncIterator[LoopbackUpstream]:
    server = await LoopbackUpstream(serve_responses=True).start()
    try:
        yield server
    finally:
        await server.stop()


def responses(i: int = 0, **body: Any) -> EngineRequest:
    return EngineRequest(RESPONSES, {"model": "m", "input": f"question {i}", **body}, f"r{i}")


def engine(url: str, **options: Any) -> UpstreamEngine:
    return UpstreamEngine("m", base_url=url, **{"backoff_base_s": 0.01, "backoff_max_s": 0.05, **options})


async def test_translated_to_chat_for_a_server_without_the_responses_api(plain: LoopbackUpstream) -> None:
    async with engine(plain.url, upstream_model="served") as e:
        assert RESPONSES in e.endpoints and e.describe()["responses"] == "chat"
        result = await e.infer(responses(1, instructions="Be brief.", max_output_tokens=5, temperature=0.2,
                                         metadata={"job": "7"}))
    assert result.status_code == 200
    [(path, sent)] = plain.received
    assert path == CHAT_PATH
    assert sent == {"model": "served", "max_tokens": 5, "temperature": 0.2,
                    "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "question 1"}]}
    sdk = SdkResponse.model_validate(result.body)
    assert sdk.object == "response" and sdk.status == "completed" and sdk.model == "served"
    assert sdk.output_text == "chat answer to question 1" and sdk.metadata == {"job": "7"}
    assert sdk.usage is not None and (sdk.usage.input_tokens, sdk.usage.output_tokens) == (7, 4)


async def test_a_cut_chat_answer_is_an_incomplete_response(plain: LoopbackUpstream) -> None:
    async with engine(plain.url) as e:
        result = await e.infer(responses(max_output_tokens=1))
    assert result.status_code == 200 and result.body["status"] == "incomplete"
    assert result.body["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_an_unsupported_field_is_the_lines_400_and_never_sent(plain: LoopbackUpstream) -> None:
    async with engine(plain.url) as e:
        result = await e.infer(responses(tools=[{"type": "web_search"}]))
    assert result.status_code == 400
    assert result.body["error"]["param"] == "tools" and result.body["error"]["code"] == "unsupported_parameter"
    assert plain.received == []


async def test_passed_through_unchanged_to_a_server_that_serves_it(native: LoopbackUpstream) -> None:
    async with engine(native.url, responses="native", upstream_model="served") as e:
        result = await e.infer(responses(2, reasoning={"effort": "low"}))
    [(path, sent)] = native.received
    assert path == RESPONSES
    # The server judges what it supports; only the model name is rewritten, as for every endpoint.
    assert sent == {"model": "served", "input": "question 2", "reasoning": {"effort": "low"}}
    assert result.status_code == 200 and result.body["native"] is True


async def test_native_mode_against_a_server_without_it_is_the_servers_404(plain: LoopbackUpstream) -> None:
    async with engine(plain.url, responses="native") as e:
        result = await e.infer(responses())
    assert result.status_code == 404 and plain.paths() == [RESPONSES]


def chat_requests(n: int, start: int = 0) -> list[EngineRequest]:
    return [EngineRequest(CHAT_PATH, {"model": "m", "messages": [{"role": "user", "content": str(i)}]}, str(i))
            for i in range(start, start + n)]


async def answer_all(e: UpstreamEngine, n: int, start: int = 0) -> None:
    results = await e.infer_many(chat_requests(n, start))
    assert [r.status_code for r in results] == [200] * n  # refused tries were retried


CAPACITY, CEILING = 4, 32


def shared_server() -> LoopbackUpstream:
    # Refusing takes the server a little time too, as shedding load does: a client that does not back
    # off keeps it as busy as its whole ceiling.
    return LoopbackUpstream(capacity=CAPACITY, work_s=0.02, refuse_s=0.005)


async def test_in_flight_limit_settles_near_what_the_server_accepts_and_recovers() -> None:
    server = await shared_server().start()
    try:
        async with engine(server.url, max_concurrency=CEILING, max_retries=100, backoff_max_s=0.02) as e:
            await answer_all(e, 60)  # warm-up: the first round trips overshoot, and the limit gives way
            assert server.refused > 0 and e.concurrency_limit < CEILING
            settled = e.concurrency_limit
            server.mark()
            refused = server.refused
            await answer_all(e, 200, 60)
            # Settled: the server never again sees many more than it accepts, and refuses few tries.
            assert server.max_in_flight <= 2 * CAPACITY
            assert server.refused - refused < 100
            assert e.describe()["concurrency_limit"] == e.concurrency_limit <= 2 * CAPACITY
            settled = max(settled, e.concurrency_limit)

            server.capacity = None  # the live users left: the batch may take the whole server again
            server.mark()
            await answer_all(e, 300, 260)
            assert e.concurrency_limit > settled and server.max_in_flight > 2 * CAPACITY
    finally:
        await server.stop()


async def test_without_adaptation_the_same_server_sees_the_whole_ceiling() -> None:
    """The bound above is the controller's doing: a fixed limit crowds the server with refused tries."""
    server = await shared_server().start()
    try:
        async with engine(server.url, max_concurrency=CEILING, max_retries=1000, backoff_max_s=0.02,
                          adaptive_concurrency=False) as e:
            await answer_all(e, 30)
            assert e.concurrency_limit == CEILING
        assert server.max_in_flight > 2 * CAPACITY and server.refused > 100
    finally:
        await server.stop()
