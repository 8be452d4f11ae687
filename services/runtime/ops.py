"""The operational HTTP surface of a background service (dispatcher, worker): `/healthz` and `/metrics`.

These processes serve no API; the small app only lets an orchestrator probe them and Prometheus
scrape them, with the same health and metrics conventions as the API (services/http). The app is
served beside the service's own loops through an `AppRunner`, so the service's exit status, not
aiohttp's, is the process's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Self

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.http.health import HealthCheck, add_health_check, health_handler
from services.http.metrics import METRICS_KEY, metrics_handler, setup_metrics

log = logging.getLogger(__name__)


def create_ops_app(checks: Mapping[str, HealthCheck]) -> web.Application:
    app = web.Application()
    setup_metrics(app)
    for name, check in checks.items():
        add_health_check(app, name, check)
    app.router.add_get("/healthz", health_handler, allow_head=False)
    app.router.add_get("/metrics", metrics_handler, allow_head=False)
    return app


def metrics_registry(app: web.Application) -> CollectorRegistry:
    """The registry `/metrics` exposes; services register their own counters on it."""
    return app[METRICS_KEY].registry


class OpsServer:
    """Serves an ops app on host:port (port 0 = any free port; `port` tells which after start)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.host = host
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        log.info("ops endpoints on http://%s:%d (/healthz, /metrics)", self.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
