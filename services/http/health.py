"""`/healthz`: 200 when every dependency the app registered answers, 503 with details otherwise.

Each part of an app registers what it depends on (`add_health_check(app, "mongo", ping)`):
the shared resources add MongoDB and S3, a Kafka producer adds Kafka. Checks run concurrently,
each under a timeout, so a hung dependency makes the answer 503 rather than making it hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

HealthCheck = Callable[[], Awaitable[object]]
HEALTH_CHECKS_KEY = web.AppKey("health_checks", dict[str, HealthCheck])
CHECK_TIMEOUT_SECONDS = 3.0


def add_health_check(app: web.Application, name: str, check: HealthCheck) -> None:
    """Register `check` (raises or times out = unhealthy). Call before the app starts."""
    app.setdefault(HEALTH_CHECKS_KEY, {})[name] = check


async def _run(check: HealthCheck) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check()
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT_SECONDS:g}s"}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


async def health_handler(request: web.Request) -> web.Response:
    checks = request.app.get(HEALTH_CHECKS_KEY, {})
    names = list(checks)
    results = await asyncio.gather(*(_run(checks[n]) for n in names))
    report = dict(zip(names, results, strict=True))
    healthy = all(r["ok"] for r in results)
    return web.json_response(
        {"status": "ok" if healthy else "unavailable", "checks": report}, status=200 if healthy else 503
    )
