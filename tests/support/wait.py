"""Waiting on a condition instead of on luck: poll it until it holds, fail loudly after a deadline.

Much of what the services do happens after the thing a test would naturally wait on: finalize deletes
a batch's result parts and releases its input pin after writing the terminal status, the notifier
records a delivery after the receiver has the request, a server logs a request after the client has
the response. A test that asserts such a thing right after the status flips passes almost always;
one that waits for it passes always. The timeout is a safety net, never a timing assertion.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(
    condition: Callable[[], Awaitable[T] | T],
    timeout_s: float = 60.0,
    *,
    what: str | Callable[[], str] = "the condition",
    interval: float = 0.05,
) -> T:
    """Call `condition()` (sync or async) until it returns something truthy, and return that.

    `what` names the awaited thing in the failure message; a callable is evaluated only then, so
    it can report the last state seen (e.g. "batch b still in_progress").
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value: Any = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {described}")
        await asyncio.sleep(interval)
