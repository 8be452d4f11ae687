"""One streaming pass over a batch's input: validate every line, enforce the file limits, cut chunks.

The pass never holds more than one read buffer plus one line (≤ 6 MB), whatever the file size.
An http(s) input is copied into S3 during the same pass, so the workers read byte ranges of a
stable object and the URL is fetched exactly once. The fetch passes the input URL guard
(services/http/url_guard.py) at every hop, under one total deadline and the file's byte limit.

What fails the batch (file-level, located `errors.data`, first 100): invalid JSON/UTF-8, oversize
lines, missing/invalid/duplicate `custom_id`, method, url, model mismatch, the request, byte and
test-model limits, an empty file, an unreachable input. What does not: `invalid_body` — such a
line is a request-level problem; the worker's own validator sends it to the error file with its
`custom_id`, and the rest of the batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from schemas.jsonl import LineSplitter, RawLine
from schemas.line_validation import LineIssue, LineValidator
from schemas.work import input_object_key
from services.http.url_guard import (
    INPUT_ALLOWLIST_HINT,
    GuardedResolver,
    URLPolicy,
    URLRefused,
    check_literal,
)
from services.settings import Settings
from services.state.ledger import ChunkPlan
from services.stores.s3 import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
READ_SIZE = 1024 * 1024
# Line problems that do not fail the batch: the line goes to the error file instead.
REQUEST_LEVEL_CODES = frozenset({"invalid_body"})


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_bytes: int
    max_requests: int
    max_line_bytes: int
    test_model: bool = False  # the limits are the test model's (worded as such in errors)


@dataclass
class PassResult:
    errors: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[ChunkPlan] = field(default_factory=list)
    requests: int = 0
    bytes: int = 0
    model: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def located(code: str, message: str, *, param: str | None = None, line: int | None = None) -> dict[str, Any]:
    """One `errors.data` entry of the Batch object."""
    return {"code": code, "message": message, "param": param, "line": line}


class ChunkCutter:
    """Cuts consecutive lines into byte ranges of at most `max_lines` requests / about `max_bytes`.

    Blank lines stay inside the range they fall in (the worker's validator skips them again) but
    are not counted; a tail of blank lines after the last request makes no chunk.
    """

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max(1, max_bytes)
        self.chunks: list[ChunkPlan] = []
        self._start: int | None = None
        self._first = 0
        self._end = 0
        self._count = 0

    def add(self, raw: RawLine, counted: bool) -> None:
        if self._start is None:
            self._start, self._first = raw.start, raw.number
        self._end = raw.end
        if counted:
            self._count += 1
            if self._count >= self.max_lines or self._end - self._start >= self.max_bytes:
                self._close()

    def _close(self) -> None:
        assert self._start is not None
        self.chunks.append(ChunkPlan(len(self.chunks), self._start, self._end, self._first, self._count))
        self._start, self._count = None, 0

    def finish(self) -> list[ChunkPlan]:
        if self._count:
            self._close()
        self._start = None
        return self.chunks


class InputCheck:
    """The synchronous heart of the pass: feed it framed lines, read `errors`, `requests`, `chunks`."""

    def __init__(
        self, *, endpoint: str, model: str | None, limits: InputLimits, chunk_lines: int, chunk_max_bytes: int
    ) -> None:
        self.limits = limits
        self.validator = LineValidator(endpoint=endpoint, model=model, max_line_bytes=limits.max_line_bytes)
        self.cutter = ChunkCutter(chunk_lines, chunk_max_bytes)
        self.errors: list[dict[str, Any]] = []
        self.requests = 0
        self.bytes = 0
        self.fatal = False  # a limit was hit: reading further is pointless

    @property
    def done(self) -> bool:
        return self.fatal or len(self.errors) >= MAX_REPORTED_ERRORS

    def _what(self) -> str:
        return "a batch-test-model file" if self.limits.test_model else "a batch input file"

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_bytes and not self.fatal:
            self.fatal = True
            self.errors.append(located(
                "file_too_large",
                f"{self._what()} may be at most {self.limits.max_bytes} bytes; this one is larger",
                param="input_file_id",
            ))

    def add_lines(self, raws: list[RawLine]) -> None:
        """The hot loop of the pass: once per line of every file, so locals rather than attribute lookups."""
        if self.done:
            return
        cutter = self.cutter
        add = cutter.add
        max_requests = self.limits.max_requests
        for raw, item in zip(raws, map(self.validator.validate, raws), strict=True):
            if item is None:  # blank line
                add(raw, False)
            elif type(item) is LineIssue and item.code not in REQUEST_LEVEL_CODES:
                self.errors.append(located(item.code, item.message, param=item.param, line=item.number))
                if len(self.errors) >= MAX_REPORTED_ERRORS:
                    return
            else:
                self.requests += 1
                if self.requests > max_requests:
                    self.fatal = True
                    self.errors.append(located(
                        "too_many_requests",
                        f"{self._what()} may hold at most {max_requests} requests; line {raw.number} "
                        f"is request {self.requests}",
                        line=raw.number,
                    ))
                    return
                add(raw, True)

    def add_line(self, raw: RawLine) -> None:
        self.add_lines([raw])

    def finish(self) -> PassResult:
        result = PassResult(errors=self.errors, requests=self.requests, bytes=self.bytes,
                            model=self.validator.model)
        if not self.errors and self.requests == 0:
            result.errors.append(located("empty_file", "the batch input file has no request lines",
                                         param="input_file_id"))
        if result.ok:
            result.chunks = self.cutter.finish()
        return result


class InputUnavailable(RuntimeError):
    """The input could not be read (URL unreachable or answered an error, object gone).

    The message is shown to the batch's owner: it says what failed, never the address, the host
    name a redirect named, or an exception's text (those carry internal names and addresses).
    """


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class URLFetch:
    """How an input URL may be fetched: the address policy, a total deadline, redirects followed."""

    policy: URLPolicy = field(default_factory=lambda: URLPolicy(what="input URLs", hint=INPUT_ALLOWLIST_HINT))
    timeout_s: float = 900.0
    max_redirects: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> URLFetch:
        return cls(URLPolicy.for_inputs(settings), settings.input_url_timeout_seconds,
                   settings.input_url_max_redirects)


def _check_target(url: str, policy: URLPolicy) -> None:
    """Scheme and IP-literal host of the URL or of a redirect target (names are checked at connect)."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises ValueError for an out-of-range port
    except ValueError:
        raise InputUnavailable("the input URL (or a redirect target) is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise URLRefused("the input URL (or a redirect target) is not an http(s) URL with a host")
    check_literal(host, policy)


def _client_failure(exc: BaseException) -> str:
    """What went wrong, worded without the exception's text (it names hosts and addresses)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the input URL's host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "could not connect to the input URL's server"
    if isinstance(exc, aiohttp.InvalidURL):
        return "the input URL (or a redirect target) is not a valid URL"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the input URL's server closed the connection before the whole body was read"
    return f"fetching the input URL failed ({type(exc).__name__})"


async def _url_body(session: aiohttp.ClientSession, url: str, fetch: URLFetch) -> AsyncIterator[bytes]:
    """The body of `url`, redirects followed by hand: each target is checked before it is called."""
    current = url
    for _ in range(fetch.max_redirects + 1):
        _check_target(current, fetch.policy)
        try:
            async with session.get(current, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise InputUnavailable(f"the input URL answered HTTP {resp.status} without a Location")
                    current = urljoin(str(resp.url), location)
                    continue
                if resp.status >= 300:
                    raise InputUnavailable(f"fetching the input URL answered HTTP {resp.status}")
                async for data in resp.content.iter_chunked(READ_SIZE):
                    yield data
                return
        except (aiohttp.ClientError, ValueError) as exc:
            raise InputUnavailable(_client_failure(exc)) from None
    raise InputUnavailable(f"the input URL redirected more than {fetch.max_redirects} times")


def _url_session(fetch: URLFetch) -> aiohttp.ClientSession:
    # The policy lives in the resolver, so the address checked is the address connected to (no DNS
    # rebinding); no proxy from the environment, which would connect to what the policy never saw.
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(fetch.policy), limit=1, use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=None),
                                 auto_decompress=False)


async def run_pass(
    store: ObjectStore,
    batch: dict[str, Any],
    *,
    limits: InputLimits,
    chunk_lines: int,
    chunk_max_bytes: int,
    url: URLFetch | None = None,
) -> PassResult:
    """Validate and chunk the batch's input (a stored file, or a URL copied to S3 on the way)."""
    check = InputCheck(endpoint=batch["endpoint"], model=batch.get("model"), limits=limits,
                       chunk_lines=chunk_lines, chunk_max_bytes=chunk_max_bytes)
    splitter = LineSplitter(limits.max_line_bytes)

    def feed(data: bytes) -> None:
        check.add_bytes(len(data))
        if not check.done:
            check.add_lines(splitter.feed(data))

    source: dict[str, Any] = batch.get("input") or {}
    key = input_object_key(batch)
    try:
        if source.get("kind") == "url":
            fetch = url or URLFetch()
            try:
                # One deadline for everything (connect, redirects, every byte): a server that drips
                # a byte now and then never trips a per-read timeout, but it does trip this.
                async with (
                    asyncio.timeout(fetch.timeout_s),
                    _url_session(fetch) as session,
                    store.multipart_writer(key, content_type="application/jsonl") as copy,
                    contextlib.aclosing(_url_body(session, str(source["url"]), fetch)) as body,
                ):
                    async for data in body:
                        feed(data)
                        if check.done:  # a limit was hit (the byte cap included): stop reading now
                            await copy.abort()  # the batch fails: keep no partial copy
                            break
                        await copy.write(data)
            except TimeoutError:
                raise InputUnavailable(
                    f"the input URL did not deliver its whole body within {fetch.timeout_s:g}s"
                ) from None
        else:
            async for data in store.iter_object(key, chunk_size=READ_SIZE):
                feed(data)
                if check.done:
                    break
    except URLRefused as exc:
        return PassResult(errors=[located("url_not_allowed", str(exc), param="input_file_id")])
    except InputUnavailable as exc:
        return PassResult(errors=[located("input_unavailable", str(exc), param="input_file_id")])
    except ObjectNotFound:
        return PassResult(errors=[located("input_unavailable", "the input file's bytes are missing from storage",
                                          param="input_file_id")])
    if not check.done:
        check.add_lines(splitter.finish())
    return check.finish()
