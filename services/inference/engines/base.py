"""The one interface every inference engine implements.

The CLI (`offhours run-batch`) and the worker both drive engines only through this class, so
an engine written once (in process, a managed server, a remote API) serves both.

Contract:
- `infer` never raises for a bad request: it answers a 4xx `EngineResult` with an
  OpenAI-shaped error body, which becomes that line's entry in the error file.
- It raises `EngineUnavailable` when the engine itself cannot answer now (server down
  after retries). Callers treat that as "not done" — the worker leaves the chunk to be
  redelivered — rather than as the request's fault.
- `batch_size` and `max_concurrency` tell the pipeline how to keep the engine full:
  `infer_many` receives up to `batch_size` requests at once (embeddings batch them into
  one forward pass; the test engine answers them in one loop), and about
  `max_concurrency` requests are kept in flight in total.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from schemas.errors import error_body


@dataclass(slots=True)
class EngineRequest:
    endpoint: str
    body: dict[str, Any]
    custom_id: str = ""


@dataclass(slots=True)
class EngineResult:
    status_code: int
    body: dict[str, Any]
    request_id: str


class EngineUnavailable(RuntimeError):
    """The engine cannot serve now; the request is not at fault and must be retried later."""


def bad_request(
    request_id: str, message: str, *, param: str | None = None, code: str | None = "invalid_request",
    status_code: int = 400,
) -> EngineResult:
    return EngineResult(status_code, error_body(message, param=param, code=code), request_id)


class Engine(ABC):
    kind: ClassVar[str]

    def __init__(self, model: str, *, endpoints: Sequence[str] | None = None, batch_size: int = 1,
                 max_concurrency: int = 1) -> None:
        self.model = model
        self.endpoints: frozenset[str] = frozenset(endpoints or self.default_endpoints())
        self.batch_size = max(1, batch_size)
        self.max_concurrency = max(1, max_concurrency)

    @classmethod
    @abstractmethod
    def default_endpoints(cls) -> frozenset[str]: ...

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights, open sessions, start managed servers."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what start() took."""

    @abstractmethod
    async def infer(self, request: EngineRequest) -> EngineResult: ...

    async def infer_many(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        if len(requests) == 1:
            return [await self.infer(requests[0])]
        return list(await asyncio.gather(*(self.infer(r) for r in requests)))

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "engine": self.kind, "endpoints": sorted(self.endpoints)}
