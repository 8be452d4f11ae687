"""The shared Pipeline as run-batch drives it: strict input order out of out-of-order completions,
a bounded window, a graceful stop, and sync and async inputs alike."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from schemas.jsonl import RawLine
from schemas.line_validation import LineValidator
from services.inference.engines.base import Engine, EngineRequest, EngineResult
from services.inference.engines.fixed_answer import FixedAnswerEngine
from services.inference.pipeline import Pipeline


class JitteryEngine(Engine):
    """A real engine whose answers take a random while, so they finish out of order."""

    kind = "jittery"

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.in_flight = 0
        self.most_in_flight = 0
        self.rng = random.Random(3)

    @classmethod
    def default_endpoints(cls) -> frozenset[str]:
        return frozenset({"/v1/chat/completions"})

    async def infer(self, request: EngineRequest) -> EngineResult:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.rng.random() * 0.004)
        finally:
            self.in_flight -= 1
        if request.custom_id.endswith("7"):
            return EngineResult(429, {"error": {"message": "slow down", "type": "rate_limit", "param": None,
                                                "code": "rate_limited"}}, f"r-{request.custom_id}")
        usage = {"prompt_tokens": 2, "completion_tokens": 1}
        return EngineResult(200, {"echo": request.custom_id, "usage": usage},
                            f"r-{request.custom_id}")

    async def infer_many(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        return list(await asyncio.gather(*(self.infer(r) for r in requests)))


class ListSink:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self.lines += [orjson.loads(x) for x in data.splitlines()]


def items(n: int) -> list[Any]:
    v = LineValidator(model="m")
    out = []
    for i in range(1, n + 1):
        line = orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}})
        if i % 50 == 0:
            line = b"{broken"
        out.append(v.validate(RawLine(i, 0, 0, line)))
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("as_async", [False, True])
async def test_results_come_out_in_input_order_with_bounded_concurrency(batch_size: int,
                                                                        as_async: bool) -> None:
    engine = JitteryEngine("m", batch_size=batch_size, max_concurrency=8)
    out, err = ListSink(), ListSink()
    pipeline = Pipeline(engine, output=out, errors=err, id_prefix="p_", max_concurrency=6)

    async def agen() -> AsyncIterator[Any]:
        for it in items(300):
            yield it

    stats = await pipeline.run(agen() if as_async else items(300))
    numbers = [int(x["id"].rpartition("_")[2]) for x in out.lines]
    errors = [int(x["id"].rpartition("_")[2]) for x in err.lines]
    assert numbers == sorted(numbers) and errors == sorted(errors)
    assert sorted(numbers + errors) == list(range(1, 301))
    assert all(x["custom_id"] == f"c{int(x['id'][-8:])}" for x in out.lines)
    rate_limited = [x for x in err.lines if x["error"]["code"] == "rate_limited"]
    assert rate_limited and all(x["response"]["status_code"] == 429 for x in rate_limited)
    assert (stats.total, stats.succeeded + stats.failed) == (300, 300)
    assert stats.failures_by_code["invalid_json"] == 6
    assert stats.input_tokens == 2 * stats.succeeded
    # Slots in flight are capped at ceil(6 / batch_size): never more requests than that at once.
    assert engine.most_in_flight <= -(-6 // batch_size) * batch_size


async def test_should_stop_ends_reading_and_writes_what_is_in_flight() -> None:
    engine = FixedAnswerEngine("m", batch_size=10)
    out = ListSink()
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    stats = await Pipeline(engine, output=out, errors=out, id_prefix="p_", should_stop=stop).run(items(1000))
    assert stats.stopped
    assert [int(x["id"][-8:]) for x in out.lines] == list(range(1, 31))  # three whole slots, nothing torn
