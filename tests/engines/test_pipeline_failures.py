"""The Pipeline keeps a line's failure to that line, and runs the same lines again without re-sending
the ones an earlier run got answered (the worker's retry of a chunk)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from schemas.jsonl import RawLine
from schemas.line_validation import LineValidator
from services.inference.engines.base import (
    Engine,
    EngineRequest,
    EngineResult,
    EngineUnavailable,
    engine_error_result,
)
from services.inference.pipeline import AnsweredSlots, Pipeline


class FlakyEngine(Engine):
    """Raises on `broken` custom ids, and is unavailable while `down` (for all requests past `answer_first`)."""

    kind = "flaky"

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.sent: Counter[str] = Counter()
        self.broken: set[str] = set()
        self.down_after: int | None = None

    @classmethod
    def default_endpoints(cls) -> frozenset[str]:
        return frozenset({"/v1/chat/completions"})

    async def infer(self, request: EngineRequest) -> EngineResult:
        if self.down_after is not None and sum(self.sent.values()) >= self.down_after:
            raise EngineUnavailable("connection refused")
        self.sent[request.custom_id] += 1
        if request.custom_id in self.broken:
            raise ValueError("a tensor of the wrong shape " + "x" * 5000)
        return EngineResult(200, {"echo": request.custom_id, "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
                            f"r-{request.custom_id}")

    async def infer_many(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        # One call for the whole slot, like a batched forward pass: one bad input fails them all.
        return [await self.infer(r) for r in requests]


class ListSink:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self.lines += [orjson.loads(x) for x in data.splitlines()]


def items(n: int) -> list[Any]:
    v = LineValidator(model="m")
    return [v.validate(RawLine(i, 0, 0, orjson.dumps({
        "custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}))) for i in range(1, n + 1)]


async def test_an_engine_exception_on_one_request_fails_only_that_line() -> None:
    engine = FlakyEngine("m", batch_size=4, max_concurrency=4)
    engine.broken = {"c6"}
    out, err = ListSink(), ListSink()
    stats = await Pipeline(engine, output=out, errors=err, id_prefix="p_").run(items(12))
    assert [x["custom_id"] for x in out.lines] == [f"c{i}" for i in range(1, 13) if i != 6]
    [line] = err.lines
    assert line["custom_id"] == "c6" and line["error"]["code"] == "engine_error" and line["error"]["line"] == 6
    assert line["response"]["status_code"] == 500
    assert "ValueError" in line["error"]["message"] and len(line["error"]["message"]) < 400  # cut, not 5000 x
    assert (stats.succeeded, stats.failed, stats.failures_by_code) == (11, 1, {"engine_error": 1})


async def test_engine_unavailable_ends_the_run_and_a_rerun_sends_only_what_was_not_answered() -> None:
    engine = FlakyEngine("m", batch_size=2, max_concurrency=1)
    engine.down_after = 4  # slots c1-c2 and c3-c4 answered, then the engine is gone
    answered: AnsweredSlots = {}
    with pytest.raises(EngineUnavailable):
        await Pipeline(engine, output=ListSink(), errors=ListSink(), id_prefix="p_", answered=answered).run(items(8))
    assert sorted(answered) == [1, 3]

    engine.down_after = None
    out = ListSink()
    stats = await Pipeline(engine, output=out, errors=out, id_prefix="p_", answered=answered).run(items(8))
    assert [x["custom_id"] for x in out.lines] == [f"c{i}" for i in range(1, 9)]
    assert all(n == 1 for n in engine.sent.values()) and len(engine.sent) == 8  # nobody sent twice
    assert (stats.succeeded, stats.reused) == (8, 4)


async def test_giving_up_keeps_the_answered_slots_and_fails_the_rest_as_engine_unavailable() -> None:
    engine = FlakyEngine("m", batch_size=2, max_concurrency=1)
    engine.down_after = 2
    answered: AnsweredSlots = {}
    with pytest.raises(EngineUnavailable):
        await Pipeline(engine, output=ListSink(), errors=ListSink(), id_prefix="p_", answered=answered).run(items(5))
    out, err = ListSink(), ListSink()
    stats = await Pipeline(engine, output=out, errors=err, id_prefix="p_", answered=answered,
                           give_up=True).run(items(5))
    assert [x["custom_id"] for x in out.lines] == ["c1", "c2"]
    assert [(x["custom_id"], x["error"]["code"], x["error"]["line"], x["response"]) for x in err.lines] == [
        (f"c{i}", "engine_unavailable", i, None) for i in range(3, 6)]
    assert sum(engine.sent.values()) == 2  # giving up asks the engine nothing
    assert (stats.succeeded, stats.failed, stats.failures_by_code) == (2, 3, {"engine_unavailable": 3})


def test_engine_error_result_names_the_exception_and_cuts_its_text() -> None:
    result = engine_error_result("req_1", RuntimeError("boom " * 1000))
    assert result.status_code == 500 and result.request_id == "req_1"
    error = result.body["error"]
    assert error["code"] == "engine_error" and error["type"] == "server_error"
    assert error["message"].startswith("the engine failed on this request (RuntimeError: boom")
    assert "[cut: 5000 characters]" in error["message"]
    assert engine_error_result("r", KeyError()).body["error"]["message"] == \
        "the engine failed on this request (KeyError)"
