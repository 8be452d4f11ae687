"""`upstream`: each request goes to an OpenAI-compatible server over HTTP.

Any server that speaks the OpenAI API works: FastDeploy's api_server, vLLM, SGLang,
`llama_cpp.server`, or a cloud API (`api_key`). The engine either points at a running server
(`base_url`) or manages one itself (`[models.NAME.server]`, see managed_server.py).

Failure handling, per request (tenacity, exponential backoff with full jitter, honouring
`Retry-After`; a managed server that is restarting is waited for):
- 429, 408, 502, 503, 504 are retried up to `max_retries` times; 500, 501 and other 5xx, a
  timeout and a broken answer only `server_error_retries` times, because they are more often
  this request crashing or hanging the server than an outage (llama_cpp.server answers 500
  even for a malformed field). When the retries are spent, the last answer becomes the
  line's error, status and body kept (a timeout a 504 `upstream_timeout`): a request the
  server keeps refusing must never hold its chunk, or its batch, hostage.
- Any other 4xx is the request's fault: it becomes the line's error at once, unchanged.
- A server that cannot be reached at all (connection refused or reset, gone mid-request,
  connect timeout) is retried `max_retries` times and then raises `EngineUnavailable`: that
  is the engine's state, not the request's, and the worker retries the chunk instead.

Requests in flight are held under an adaptive limit (aimd.py): a server that answers 429/503, or
slower than its recent baseline, gets fewer at once, so a batch on a shared deployment gives way to
its live users; `max_concurrency` stays the ceiling. `/v1/responses` is passed through, or answered
through the server's chat endpoint (`responses = "chat"`, schemas/responses.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from typing import Any, Literal, Self

import aiohttp
import orjson
from pydantic import Field, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from schemas.errors import error_body
from schemas.inference import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RESPONSES
from schemas.responses import chat_body
from services.inference.engines.aimd import AimdController, ResizableLimiter
from services.inference.engines.base import Engine, EngineRequest, EngineResult, EngineUnavailable
from services.inference.engines.managed_server import ManagedServer, ManagedServerConfig, ServerUnavailable
from services.inference.engines.openai_params import new_request_id, parse_responses, responses_result
from services.inference.registry import EngineOptions
from services.settings import get_settings

log = logging.getLogger(__name__)

# Statuses that mean "try again later" rather than "this request is wrong".
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Of those, the ones that say "busy" rather than "this request broke me": the full `max_retries`.
BUSY_STATUSES = frozenset({408, 429, 502, 503, 504})
# Of those, the ones a server sends when it sheds load: the adaptive limit gives way on them.
OVERLOAD_STATUSES = frozenset({429, 503})


class UpstreamOptions(EngineOptions):
    base_url: str | None = None  # e.g. http://10.0.0.5:8000 or https://api.example.com/v1
    server: ManagedServerConfig | None = None
    api_key: str | None = None  # default: Settings.upstream_api_key (OFFHOURS_UPSTREAM_API_KEY)
    upstream_model: str | None = None  # rewrite body.model to the name the server knows
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(600.0, gt=0)  # whole request, generation included
    connect_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(6, ge=0)
    # A 500/501/... is more often this request crashing the handler than an outage, and
    # some servers (llama_cpp.server) answer 500 even for a malformed field: fewer retries.
    server_error_retries: int = Field(2, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    retry_after_max_s: float = Field(300.0, ge=0)
    max_concurrency: int = 64
    # Adapt the requests in flight (AIMD, aimd.py) between min_concurrency and max_concurrency, so a
    # batch on a shared deployment gives way to its live users; false keeps max_concurrency fixed.
    adaptive_concurrency: bool = True
    min_concurrency: int = Field(1, ge=1)
    # A latency this many times the recent baseline counts as overload (0: only 429/503 do).
    latency_backoff_factor: float = Field(2.0, ge=0)
    # /v1/responses: "native" sends it to the server's own /v1/responses unchanged; "chat" answers it
    # through the server's /v1/chat/completions (for servers without the Responses API).
    responses: Literal["native", "chat"] = "chat"

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.base_url is None) == (self.server is None):
            raise ValueError("set exactly one of `base_url` (a running server) or `server` (a managed one)")
        return self


def join_url(base_url: str, endpoint: str) -> str:
    """Base URLs are written with or without the `/v1` the endpoints start with."""
    base = base_url.rstrip("/")
    if base.endswith("/v1") and endpoint.startswith("/v1/"):
        return base + endpoint[3:]
    return base + endpoint


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as delay-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return (rng or random).uniform(0.0, min(cap, base * (2 ** attempt)))


class _Retry(Exception):
    """One failed try. `kind`: "status" (an HTTP answer), "timeout", "broken" (a cut or garbled answer)
    or "unreachable" (no answer: the server is not there)."""

    def __init__(self, reason: str, *, kind: str = "status", status: int | None = None,
                 body: dict[str, Any] | None = None, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def suspect(self) -> bool:
        """This request itself may be what fails (so fewer retries): not a busy or absent server."""
        return self.kind in ("timeout", "broken") or (self.status is not None and self.status not in BUSY_STATUSES)

    def final(self, url: str, attempts: int) -> EngineResult:
        """What the line gets once the retries are spent; raises when the engine is not there at all."""
        if self.kind == "unreachable":
            raise EngineUnavailable(f"upstream {url} still failing after {attempts} attempts: {self}")
        request_id = self.request_id or new_request_id()
        if self.kind == "timeout":
            return EngineResult(504, error_body(f"upstream did not answer in time after {attempts} attempts",
                                                type="upstream_error", code="upstream_timeout"), request_id)
        if self.status is None:
            return EngineResult(502, error_body(f"upstream answer was broken after {attempts} attempts: {self}",
                                                type="upstream_error", code="upstream_invalid_response"),
                                request_id)
        return EngineResult(self.status, self.body or _error_from_text(self.status, b""), request_id)


def _classify(exc: BaseException) -> str:
    # ConnectionTimeoutError is a TimeoutError too, but it means "no server", not "this request hangs".
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "unreachable"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "unreachable"
    return "broken"


def _error_from_text(status: int, raw: bytes) -> dict[str, Any]:
    text = raw.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"
    return error_body(f"upstream answered HTTP {status}: {text}", type="upstream_error",
                      code=f"upstream_http_{status}")


class UpstreamEngine(Engine):
    kind = "upstream"

    def __init__(self, model: str, **options: Any) -> None:
        self.options = UpstreamOptions.parse(model, options)
        super().__init__(model, **self.options.engine_kwargs())
        self.server: ManagedServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._aimd = AimdController(self.max_concurrency, floor=self.options.min_concurrency,
                                    latency_factor=self.options.latency_backoff_factor)
        self._limiter = ResizableLimiter(self.max_concurrency)
        self.retries = 0  # requests re-sent, for logs and tests
        self._base_url = self.options.base_url or ""
        key = self.options.api_key
        if key is None and (fallback := get_settings().upstream_api_key) is not None:
            key = fallback.get_secret_value()
        self._headers = {"Content-Type": "application/json", **self.options.headers}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    @classmethod
    def default_endpoints(cls) -> frozenset[str]:
        return frozenset({CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RESPONSES})

    async def start(self) -> None:
        if self._session is not None:
            return
        if self.options.server is not None:
            self.server = ManagedServer(self.options.server, self.model)
            await self.server.start()
            self._base_url = self.server.base_url
        o = self.options
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=self.max_concurrency),
            timeout=aiohttp.ClientTimeout(total=o.timeout_s, sock_connect=o.connect_timeout_s),
            headers=self._headers,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        server, self.server = self.server, None
        if server is not None:
            await server.close()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["base_url"] = self._base_url or None
        if self.options.server is not None:
            out["server"] = self.options.server.preset
        out["concurrency_limit"] = self.concurrency_limit
        out["responses"] = self.options.responses
        return out

    @property
    def concurrency_limit(self) -> int:
        """Requests this engine lets be in flight now (the adaptive limit, or max_concurrency)."""
        return self._limiter.limit

    @property
    def in_flight(self) -> int:
        return self._limiter.in_flight

    async def infer(self, request: EngineRequest) -> EngineResult:
        if self._session is None:
            raise EngineUnavailable(f"engine for {self.model!r} is not started")
        if request.endpoint == RESPONSES and self.options.responses == "chat":
            return await self._responses_via_chat(request)
        return await self._request(request.endpoint, request.body, request.custom_id)

    async def _responses_via_chat(self, request: EngineRequest) -> EngineResult:
        parsed = parse_responses(request.body, new_request_id())
        if isinstance(parsed, EngineResult):
            return parsed
        chat = await self._request(CHAT_COMPLETIONS, chat_body(parsed), request.custom_id)
        return responses_result(parsed, chat)

    async def _request(self, endpoint: str, body: dict[str, Any], custom_id: str) -> EngineResult:
        if self.options.upstream_model is not None:
            body = {**body, "model": self.options.upstream_model}
        payload = orjson.dumps(body)
        url = join_url(self._base_url, endpoint)
        o = self.options
        suspect_failures = 0

        def stop(state: RetryCallState) -> bool:
            nonlocal suspect_failures
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Retry) and exc.suspect:
                suspect_failures += 1
                if suspect_failures > o.server_error_retries:
                    return True
            return state.attempt_number > o.max_retries

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Retry) and exc.retry_after is not None:
                return min(exc.retry_after, o.retry_after_max_s)
            return backoff_delay(state.attempt_number - 1, o.backoff_base_s, o.backoff_max_s)

        def before_sleep(state: RetryCallState) -> None:
            self.retries += 1
            log.info("upstream %s: %s; retry %d/%d in %.2fs (%s)", url,
                     state.outcome.exception() if state.outcome else "?", state.attempt_number, o.max_retries,
                     state.upcoming_sleep, custom_id)

        retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception_type(_Retry),
                                 before_sleep=before_sleep, reraise=True)
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if attempts > 1:
                        await self._wait_for_server()
                    return await self._limited_send(url, payload)
        except _Retry as last:
            return last.final(url, attempts)
        raise AssertionError("unreachable: tenacity either returns, raises or retries")

    async def _wait_for_server(self) -> None:
        if self.server is None:
            return
        try:
            async with asyncio.timeout(self.server.config.startup_timeout_s):
                await self.server.wait_ready()
        except (ServerUnavailable, TimeoutError) as exc:
            raise EngineUnavailable(f"managed server for {self.model!r} is not available: {exc}") from None

    async def _limited_send(self, url: str, payload: bytes) -> EngineResult:
        """One try, inside the in-flight limit, its outcome fed to the adaptive limit."""
        limiter, aimd = self._limiter, self._aimd
        await limiter.acquire()
        try:
            if not self.options.adaptive_concurrency:
                return await self._send(url, payload)
            token = aimd.sent()
            started = time.monotonic()
            try:
                result = await self._send(url, payload)
            except _Retry as exc:
                if exc.status in OVERLOAD_STATUSES and aimd.overloaded(token):
                    log.info("upstream %s: HTTP %s, in-flight limit of %s now %d", url, exc.status, self.model,
                             aimd.limit)
                raise
            # Any answer the server produced (a 4xx too) is a latency sample; only 5xx are not.
            if result.status_code < 500 and aimd.answered(token, time.monotonic() - started):
                log.info("upstream %s: latency %.3fs over a %.3fs baseline, in-flight limit of %s now %d", url,
                         aimd.recent_s or 0.0, aimd.baseline_s or 0.0, self.model, aimd.limit)
            return result
        finally:
            limiter.release()
            if self.options.adaptive_concurrency and limiter.limit != aimd.limit:
                limiter.resize(aimd.limit)

    async def _send(self, url: str, payload: bytes) -> EngineResult:
        assert self._session is not None
        try:
            async with self._session.post(url, data=payload) as resp:
                raw = await resp.read()
                status = resp.status
                request_id = resp.headers.get("x-request-id") or new_request_id()
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}", kind=_classify(exc)) from None
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            body = None
        if status in RETRY_STATUSES or status >= 500:
            raise _Retry(f"HTTP {status}", status=status, body=body or _error_from_text(status, raw),
                         retry_after=retry_after, request_id=request_id)
        if status >= 400:
            return EngineResult(status, body or _error_from_text(status, raw), request_id)
        if body is None:
            return EngineResult(502, error_body(f"upstream answered HTTP {status} with a body that is not a JSON "
                                                f"object: {raw[:200]!r}", type="upstream_error",
                                                code="upstream_invalid_response"), request_id)
        return EngineResult(status, body, request_id)
