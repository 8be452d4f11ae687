"""`/healthz`: 200 when every dependency the app registered answers, 503 naming the failing ones otherwise.

Each part of an app registers what it depends on (`add_health_check(app, "mongo", ping)`):
the shared resources add MongoDB and S3, a Kafka producer adds Kafka. Checks run concurrently,
each under a timeout, so a hung dependency makes the answer 503 rather than making it hang.

The body says which component is failing and nothing more: `/healthz` answers without a key,
and a backend's error text names internal hosts, addresses and ports. What failed and why goes
to the log, where the operator reads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[object]]
HEALTH_CHECKS_KEY = web.AppKey("health_checks", dict[str, HealthCheck])
CHECK_TIMEOUT_SECONDS = 3.0


def add_health_check(app: web.Application, name: str, check: HealthCheck) -> None:
    """Register `check` (raises or times out = unhealthy). Call before the app starts."""
    app.setdefault(HEALTH_CHECKS_KEY, {})[name] = check


async def _run(name: str, check: HealthCheck) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check()
    except TimeoutError:
        log.warning("health check %s failing: no answer within %gs", name, CHECK_TIMEOUT_SECONDS)
        return {"ok": False, "status": "failing"}
    except Exception as exc:
        log.warning("health check %s failing: %s: %s", name, type(exc).__name__, exc)
        return {"ok": False, "status": "failing"}
    return {"ok": True, "status": "ok", "ms": round((time.perf_counter() - started) * 1000, 1)}


async def health_handler(request: web.Request) -> web.Response:
    checks = request.app.get(HEALTH_CHECKS_KEY, {})
    names = list(checks)
    results = await asyncio.gather(*(_run(n, checks[n]) for n in names))
    report = dict(zip(names, results, strict=True))
    failing = [n for n, r in report.items() if not r["ok"]]
    return web.json_response(
        {"status": "unavailable" if failing else "ok", "failing": failing, "checks": report},
        status=503 if failing else 200,
    )
