"""Retrying a step until it succeeds or the process is stopping: the one backoff loop of the services.

The consumers (dispatcher, worker, notifier) retry a failed record in place rather than skipping
it, so a partition's order holds and nothing is committed past a record whose effects are not
durable. What differs between them is only what to call, what to log and how fast to back off;
tenacity does the waiting. The sleep wakes as soon as `stop` is set and then ends the retrying,
so a stopping process never starts one more attempt: the record stays uncommitted and is
redelivered to whoever owns its partition next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """`stop` was set before the step succeeded; the step will not be tried again."""


async def retry_until_stopped(
    step: Callable[[], Awaitable[T]],
    *,
    what: str,
    stop: asyncio.Event | None = None,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """`await step()` until it succeeds, and return its result. With no `stop`, retry for good.

    Waits double from `first_delay` up to `max_delay`. Each failure is logged with its traceback
    (`what` names the step) and passed to `on_failure` (a metric, say). Raises `Stopped` when
    `stop` is set before a try succeeded (checked before each try, and it cuts a wait short).
    """

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            raise Stopped

    def failed(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.upcoming_sleep
        log.warning("%s failed; retrying in %.1fs", what, wait, exc_info=exc)
        if on_failure is not None and exc is not None:
            on_failure(exc)

    retrying = AsyncRetrying(
        sleep=sleep,
        wait=wait_exponential(multiplier=first_delay, max=max_delay),
        retry=retry_if_exception_type(Exception),
        before_sleep=failed,
        reraise=True,
    )
    if stop is not None and stop.is_set():
        raise Stopped
    return await retrying(step)
