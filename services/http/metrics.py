"""Prometheus metrics: one registry per app, request count and latency by route and status.

A per-app registry (not prometheus_client's global one) keeps two apps in one process — tests,
or files and batches mounted separately — from colliding on metric names. Services add their
own metrics to `app[METRICS_KEY].registry`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Long enough buckets for multi-hundred-MB uploads next to millisecond metadata calls.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNMATCHED_ROUTE = "<unmatched>"


@dataclass
class HttpMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "offhours_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "offhours_http_request_duration_seconds",
            "Time from request start until the handler returned (streamed bodies included).",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "offhours_http_requests_in_flight", "HTTP requests being handled now.", registry=self.registry
        )


METRICS_KEY = web.AppKey("metrics", HttpMetrics)


def route_label(request: web.Request) -> str:
    """The route template (`/v1/files/{file_id}`), never the raw path: ids would explode cardinality."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def metrics_middleware(metrics: HttpMetrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        metrics.in_flight.inc()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.in_flight.dec()
            route = route_label(request)
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)

    return middleware


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application) -> HttpMetrics:
    metrics = HttpMetrics()
    app[METRICS_KEY] = metrics
    app.middlewares.append(metrics_middleware(metrics))
    return metrics
