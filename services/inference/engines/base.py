"""The one interface every inference engine implements.

The CLI (`offhours run-batch`) and the worker both drive engines only through this class, so
an engine written once (in process, a managed server, a remote API) serves both.

Contract — a line failure and an unavailable engine are different things:
- A request that fails is that request's outcome. `infer` answers a bad request with a 4xx
  `EngineResult` (OpenAI-shaped error body), and a request the engine could not serve after
  its own retries (an upstream 5xx/429/408, a timeout) with that status and body; either
  becomes that line's entry in the error file. Any other exception raised for one request
  is turned into that line's `engine_error` by the pipeline (`engine_error_result`), so one
  request can never hold its chunk.
- `EngineUnavailable` alone means the engine as a whole cannot answer now (its server
  refuses connections, went away, is not started). It is never the request's fault: the
  worker retries the chunk a bounded number of times without re-running the lines already
  answered, then gives the unanswered lines `engine_unavailable`; run-batch stops and says
  to resume.
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
from schemas.text import cut


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
    """The engine as a whole cannot serve now; the request is not at fault and must be retried later.

    Raise it only for the whole engine (connection refused, server gone, not started): anything
    about one request is that request's `EngineResult`.
    """


ENGINE_ERROR = "engine_error"


def engine_error_result(request_id: str, exc: BaseException) -> EngineResult:
    """The line's 500 when the engine raised on this one request (a bug, a rejected input, ...).

    Only the exception's type and a cut of its text: it is engine-internal and lands in a user's file.
    """
    text = cut(str(exc))
    message = f"the engine failed on this request ({type(exc).__name__}{': ' + text if text else ''})"
    return EngineResult(500, error_body(message, type="server_error", code=ENGINE_ERROR), request_id)


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
