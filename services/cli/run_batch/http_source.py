"""A URL input, read by one streaming GET.

Lines are framed as they arrive by the same LineSplitter the Files API uses. A connection that
drops mid-body is re-requested from the byte it stopped at (`Range`; a server that ignores
Range answers 200 and what was already read is skipped), so a long download never starts over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp

from schemas.jsonl import LineSplitter, RawLine
from services.cli.run_batch.errors import RunBatchError
from services.cli.run_batch.http_retry import (
    TRANSIENT_ERRORS,
    RetryPolicy,
    describe_failure,
    is_retryable_status,
)
from services.cli.run_batch.locations import redact

log = logging.getLogger(__name__)

READ_BLOCK = 1 << 20


class UrlInput:
    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        max_line_bytes: int,
        headers: dict[str, str] | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.url = url
        self.description = redact(url)
        self.session = session
        self.max_line_bytes = max_line_bytes
        self.headers = dict(headers or {})
        self.retry = retry
        self.size: int | None = None
        self._received = 0
        self._response: aiohttp.ClientResponse | None = None

    async def open(self) -> None:
        """Send the GET and check its status, before any output file is touched."""
        self._response = await self._request()
        self.size = self._response.content_length

    async def _request(self) -> aiohttp.ClientResponse:
        headers = dict(self.headers)
        if self._received:
            headers["Range"] = f"bytes={self._received}-"
        failures = 0
        while True:
            try:
                resp = await self.session.get(self.url, headers=headers)
            except TRANSIENT_ERRORS as exc:
                failures += 1
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                retry_after = None
            else:
                if 200 <= resp.status < 300:
                    return resp
                body = await resp.content.read(300)
                resp.release()
                problem = describe_failure(resp.status, resp.reason, body)
                if not is_retryable_status(resp.status):
                    raise RunBatchError(f"cannot read input {self.description}: {problem}")
                failures += 1
                retry_after = resp.headers.get("Retry-After")
            if failures >= self.retry.attempts:
                raise RunBatchError(
                    f"cannot read input {self.description}: {problem} (gave up after {failures} tries)"
                )
            delay = self.retry.delay(failures, retry_after)
            log.warning("GET %s failed (%s); retry %d in %.1f s", self.description, problem, failures, delay)
            await asyncio.sleep(delay)

    async def batches(self) -> AsyncIterator[list[RawLine]]:
        """Lines as they arrive, a network chunk's worth at a time."""
        if self._response is None:
            await self.open()
        splitter = LineSplitter(self.max_line_bytes)
        resp = self._response
        assert resp is not None
        drops = 0
        while True:
            # A server that ignores Range answers 200 with the whole body: skip what we have.
            skip = self._received if (self._received and resp.status != 206) else 0
            try:
                async for chunk in resp.content.iter_chunked(READ_BLOCK):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    self._received += len(chunk)
                    drops = 0
                    lines = splitter.feed(chunk)
                    if lines:
                        yield lines
                break
            except TRANSIENT_ERRORS as exc:
                drops += 1
                if drops >= self.retry.attempts:
                    raise RunBatchError(
                        f"reading input {self.description} failed at byte {self._received}: "
                        f"{type(exc).__name__}: {exc} (gave up after {drops} tries)"
                    ) from exc
                log.warning("input %s dropped at byte %d (%s); resuming",
                            self.description, self._received, exc)
                await asyncio.sleep(self.retry.delay(drops))
            finally:
                resp.release()
            resp = await self._request()
        last = splitter.finish()
        if last:
            yield last

    def position(self) -> int:
        return self._received

    def close(self) -> None:
        if self._response is not None:
            self._response.release()
