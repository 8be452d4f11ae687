"""The worker's `/healthz` and `/metrics`: MongoDB, S3, and a heartbeat written recently."""

from __future__ import annotations

import time

from aiohttp import web

from services.runtime.backends import Backends
from services.runtime.ops import create_ops_app
from services.worker.heartbeat import Heartbeat


def create_worker_app(heartbeat: Heartbeat, backends: Backends) -> web.Application:
    async def heartbeat_fresh() -> None:
        # Three missed beats: /v1/models is about to drop this worker; say so before it does.
        if heartbeat.last_ok is None or time.monotonic() - heartbeat.last_ok > 3 * heartbeat.interval_s:
            raise RuntimeError("no successful heartbeat recently")

    return create_ops_app({**backends.health_checks(), "heartbeat": heartbeat_fresh})
