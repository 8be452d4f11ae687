"""The PUT of a finished output file to its URL: streamed from disk, any 2xx, retried with backoff."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import BinaryIO

import aiohttp

from services.cli.run_batch.errors import RunBatchError
from services.cli.run_batch.http_retry import (
    TRANSIENT_ERRORS,
    RetryPolicy,
    describe_failure,
    is_retryable_status,
)
from services.cli.run_batch.locations import redact

log = logging.getLogger(__name__)


def _open_for_upload(path: Path) -> BinaryIO:
    # Opening is instant; aiohttp then reads the file in its executor while it sends.
    return open(path, "rb")


async def upload(
    path: Path,
    url: str,
    session: aiohttp.ClientSession,
    *,
    headers: dict[str, str] | None = None,
    retry: RetryPolicy = RetryPolicy(),
) -> int:
    """PUT the file at `path` to `url`, streamed from disk; the final HTTP status.

    Any 2xx is success: S3 answers 200, many servers answer 201 Created or 204 No Content
    (FastDeploy and vLLM take the last two for failures). 5xx, 429, 408 and broken
    connections are retried with exponential backoff; any other 4xx is final.
    """
    where = redact(url)
    failures = 0
    while True:
        retry_after: str | None = None
        try:
            with _open_for_upload(path) as f:
                async with session.put(url, data=f, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return resp.status
                    problem = describe_failure(resp.status, resp.reason, await resp.content.read(300))
                    if not is_retryable_status(resp.status):
                        raise RunBatchError(f"upload to {where} was refused: {problem}")
                    retry_after = resp.headers.get("Retry-After")
        except TRANSIENT_ERRORS as exc:
            problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
        except OSError as exc:
            raise RunBatchError(f"cannot read {path} for upload: {exc.strerror or exc}") from exc
        failures += 1
        if failures >= retry.attempts:
            raise RunBatchError(f"upload to {where} failed after {failures} tries; last: {problem}")
        delay = retry.delay(failures, retry_after)
        log.warning("upload to %s failed (%s); retry %d in %.1f s", where, problem, failures, delay)
        await asyncio.sleep(delay)
