"""When and how long to wait before retrying an HTTP request (URL input GET, output PUT)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

import aiohttp

# Answers that say "try again later"; every other 4xx is final (a wrong URL or an expired
# signature does not heal by retrying).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0

# What a dropped connection, a refused connect or a stalled read raise in aiohttp.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError, asyncio.TimeoutError, ConnectionError,
)


def is_retryable_status(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first one included
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_delay: float = 30.0

    def delay(self, retry: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based): exponential, with jitter.

        Jitter (a random 50-100 % of the step) keeps many clients that failed together from
        retrying together; a server's own Retry-After (in seconds) wins when it is longer.
        """
        step = min(self.max_delay, self.backoff * 2 ** (retry - 1))
        wait = step * random.uniform(0.5, 1.0)
        if retry_after:
            # An HTTP-date Retry-After is not worth parsing for a wait this short.
            with contextlib.suppress(ValueError):
                wait = max(wait, min(MAX_RETRY_AFTER, float(retry_after)))
        return wait


def describe_failure(status: int, reason: str | None, body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace").strip()
    return f"HTTP {status} {reason or ''}".rstrip() + (f": {text}" if text else "")
