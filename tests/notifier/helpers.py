"""Small helpers of the notifier tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai


def unwrap(request: Any, secret: str) -> Any:
    """What a receiver does: `openai.OpenAI(webhook_secret=...).webhooks.unwrap(body, headers)`."""
    return openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(request.body, request.headers)


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll `check()` until it returns something truthy; fail with `what` after `timeout_s` (a safety net,
    not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
