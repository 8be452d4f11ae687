"""Validated lines in, output and error lines out, in input order, with the engine kept full.

Shared by `offhours run-batch` and the worker. Lines are grouped into slots of the
engine's `batch_size`; up to enough slots to cover `max_concurrency` requests run at once,
and finished slots are written strictly in input order. The window of slots is the
bounded reorder buffer: memory depends on concurrency x line size, never on file size.

A line's failure is that line's outcome: an engine's error answer, and any exception an engine
raises for its requests (other than `EngineUnavailable`), becomes the line's error line
(`engine_error`), and the run goes on. `EngineUnavailable` ends the run (run-batch stops there and
resumes later). A caller that runs the same lines again after that (the worker retrying a chunk)
passes the same `answered` dict to every run: slots answered by an earlier run are taken from it
instead of being sent again, and with `give_up` the slots still unanswered become
`engine_unavailable` error lines without reaching the engine.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

import orjson

from schemas.batch_lines import error_line, output_line
from schemas.inference import usage_of
from schemas.line_validation import LineIssue, ValidLine
from services.inference.engines.base import (
    Engine,
    EngineRequest,
    EngineResult,
    EngineUnavailable,
    engine_error_result,
)
from services.inference.engines.openai_params import new_request_id

log = logging.getLogger(__name__)

Item = ValidLine | LineIssue
# The engine's answers to a slot's requests, by the number of the slot's first line: what one run of
# some lines leaves for the next run of the same lines (the same items give the same slots).
AnsweredSlots = dict[int, list[EngineResult]]

ENGINE_UNAVAILABLE = "engine_unavailable"


class Sink(Protocol):
    async def write(self, data: bytes) -> None: ...


@dataclass
class PipelineStats:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    stopped: bool = False
    last_line: int = 0  # number of the last line written
    reused: int = 0  # lines whose answer an earlier run left in `answered` (not sent again)
    failures_by_code: dict[str, int] = field(default_factory=dict)

    def add(self, other: PipelineStats) -> None:
        self.total += other.total
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.reused += other.reused
        self.last_line = max(self.last_line, other.last_line)
        for code, n in other.failures_by_code.items():
            self.failures_by_code[code] = self.failures_by_code.get(code, 0) + n


@dataclass(slots=True)
class _SlotResult:
    output: bytes
    errors: bytes
    stats: PipelineStats


def _error_code(result: EngineResult) -> tuple[str, str, str | None]:
    err = result.body.get("error") if isinstance(result.body, dict) else None
    if isinstance(err, dict):
        param = err.get("param")
        return (str(err.get("code") or err.get("type") or "request_failed"), str(err.get("message") or ""),
                param if isinstance(param, str) else None)
    return "request_failed", f"the engine answered HTTP {result.status_code}", None


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        *,
        output: Sink,
        errors: Sink,
        id_prefix: str,
        max_concurrency: int | None = None,
        on_progress: Callable[[PipelineStats], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        answered: AnsweredSlots | None = None,
        give_up: bool = False,
    ) -> None:
        self.engine = engine
        self.output = output
        self.errors = errors
        self.id_prefix = id_prefix
        concurrency = max_concurrency or engine.max_concurrency
        self.slot_size = engine.batch_size
        self.slots_in_flight = max(1, math.ceil(concurrency / self.slot_size))
        self.window_limit = 2 * self.slots_in_flight
        self._sem = asyncio.Semaphore(self.slots_in_flight)
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.answered = answered
        self.give_up = give_up
        self.stats = PipelineStats()

    async def _infer(self, requests: list[EngineRequest]) -> list[EngineResult]:
        """The engine's answers; an exception on some request becomes that request's `engine_error`."""
        try:
            return await self.engine.infer_many(requests)
        except EngineUnavailable:
            raise
        except Exception as exc:
            if len(requests) == 1:
                log.warning("engine %s failed on request %r", self.engine.model, requests[0].custom_id,
                            exc_info=True)
                return [engine_error_result(new_request_id(), exc)]
        # A batched call fails as a whole: ask one by one, so only the request at fault fails.
        return [one for ones in await asyncio.gather(*(self._infer([r]) for r in requests)) for one in ones]

    async def _run_slot(self, items: Sequence[Item]) -> _SlotResult:
        engine = self.engine
        endpoints = engine.endpoints
        requests: list[EngineRequest] = [
            EngineRequest(it.url, it.body, it.custom_id)
            for it in items
            if type(it) is ValidLine and it.url in endpoints
        ]
        results: list[EngineResult] | None = []
        reused = 0
        if requests:
            key = items[0].number
            results = self.answered.get(key) if self.answered is not None else None
            if results is not None:
                reused = len(results)
            elif not self.give_up:
                async with self._sem:
                    results = await self._infer(requests)
                if self.answered is not None:
                    self.answered[key] = results
        out: list[bytes] = []
        # One sink for both (FastDeploy-style): keep strict input order in one list.
        err: list[bytes] = out if self.errors is self.output else []
        stats = PipelineStats(total=len(items), last_line=items[-1].number if items else 0, reused=reused)
        failures = stats.failures_by_code
        succeeded = input_tokens = output_tokens = 0
        # This loop runs once per line of every file: locals and inline dicts, not helpers.
        dumps = orjson.dumps
        prefix = f"batch_req_{self.id_prefix}"
        r = iter(results) if results is not None else None
        for it in items:
            line_id = prefix + str(it.number).zfill(8)  # == f"{prefix}{number:08d}", at half the cost
            if type(it) is LineIssue:
                err.append(dumps(error_line(line_id, it.custom_id, it.code, it.message, param=it.param,
                                            line=it.number)))
                failures[it.code] = failures.get(it.code, 0) + 1
                continue
            if it.url not in endpoints:
                code = "unsupported_endpoint"
                err.append(dumps(error_line(
                    line_id, it.custom_id, code,
                    f"line {it.number}: model {engine.model!r} does not serve {it.url} "
                    f"(it serves {', '.join(sorted(endpoints))})", param="url", line=it.number)))
                failures[code] = failures.get(code, 0) + 1
                continue
            if r is None:  # given up: the engine never answered this line
                code = ENGINE_UNAVAILABLE
                err.append(dumps(error_line(
                    line_id, it.custom_id, code,
                    f"line {it.number}: model {engine.model!r} was unavailable through every retry of this "
                    "request's chunk; it was not answered", line=it.number)))
                failures[code] = failures.get(code, 0) + 1
                continue
            res = next(r)
            status = res.status_code
            if 200 <= status < 300:
                inp, outp = usage_of(res.body)
                input_tokens += inp
                output_tokens += outp
                succeeded += 1
                out.append(dumps(output_line(line_id, it.custom_id, status, res.request_id, res.body)))
            else:
                response = {"status_code": status, "request_id": res.request_id, "body": res.body}
                code, message, param = _error_code(res)
                failures[code] = failures.get(code, 0) + 1
                err.append(dumps(error_line(line_id, it.custom_id, code, message, param=param, line=it.number,
                                            response=response)))
        stats.succeeded = succeeded
        stats.failed = stats.total - succeeded
        stats.input_tokens = input_tokens
        stats.output_tokens = output_tokens
        return _SlotResult(
            b"\n".join(out) + b"\n" if out else b"",
            b"\n".join(err) + b"\n" if err and err is not out else b"",
            stats,
        )

    async def _write(self, result: _SlotResult) -> None:
        if result.output:
            await self.output.write(result.output)
        if result.errors:
            await self.errors.write(result.errors)
        self.stats.add(result.stats)
        if self.on_progress is not None:
            self.on_progress(self.stats)

    async def run(self, items: Iterable[Item] | AsyncIterable[Item]) -> PipelineStats:
        window: deque[asyncio.Task[_SlotResult]] = deque()
        try:
            if isinstance(items, AsyncIterable):
                async with aclosing(_aslots(items, self.slot_size)) as slots:
                    async for slot in slots:
                        if await self._dispatch(window, slot):
                            break
            else:
                # islice fills each slot in C: no per-line Python work in this loop.
                iterator = iter(items)
                while slot := list(islice(iterator, self.slot_size)):
                    if await self._dispatch(window, slot):
                        break
            while window:
                await self._write(await window.popleft())
        except BaseException:
            for task in window:
                task.cancel()
            raise
        return self.stats

    async def _dispatch(self, window: deque[asyncio.Task[_SlotResult]], slot: list[Item]) -> bool:
        """Start a slot, write every finished slot at the head of the window; True to stop reading."""
        window.append(asyncio.ensure_future(self._run_slot(slot)))
        while window and (len(window) >= self.window_limit or window[0].done()):
            await self._write(await window.popleft())
        if len(slot) == self.slot_size and self.should_stop is not None and self.should_stop():
            self.stats.stopped = True
            return True
        return False


async def _aslots(items: AsyncIterable[Item], size: int) -> AsyncIterator[list[Item]]:
    slot: list[Item] = []
    async for it in items:
        slot.append(it)
        if len(slot) >= size:
            yield slot
            slot = []
    if slot:
        yield slot
