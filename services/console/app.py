"""Mounting the console on the api app: its page, its static files, its event stream, its headers.

`setup_console(app)` expects an app from `create_service_app` (MongoDB is open before this cleanup
context runs). Routes:

- `GET /` — the page (services/console/static/index.html); everything else is drawn by console.js
  from the public `/v1` API, with the key the user typed, kept in the tab's sessionStorage.
- `GET /console/{name}` — the page's scripts, styles and icon, from the package (no build step).
- `GET /console/events` — Server-Sent Events: the batch events of the key's project, live.

The key travels only as `Authorization: Bearer`, never in a URL or a cookie, so the page needs no
CSRF defence and an access log or a Referer cannot leak it. Console responses carry a strict
Content-Security-Policy: scripts and styles only from this origin, no inline code, no string-to-DOM
sinks (Trusted Types), no framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

import orjson
from aiohttp import web

from services.console.fleet import FleetMetrics
from services.console.hub import CLOSED, RESYNC, EventHub, Subscription
from services.http.auth import authenticate
from services.http.health import add_health_check
from services.http.metrics import METRICS_KEY
from services.http.service import DB_KEY, SETTINGS_KEY
from services.state.batches import BatchStore

log = logging.getLogger(__name__)

EVENTS_PATH = "/console/events"
STATIC_PREFIX = "/console/"
# Comments on an idle stream: proxies and browsers drop a connection that stays silent too long.
KEEPALIVE_SECONDS = 15.0
DISCONNECT_CHECK_SECONDS = 1.0

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        # innerHTML and friends throw: user strings can only ever become text.
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The files of services/console/static, read once at start (they are small and never change)."""
    assets: dict[str, Asset] = {}
    root = resources.files("services.console") / "static"
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(
                body, _TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            )
    return assets


ASSETS_KEY = web.AppKey("console_assets", dict[str, Asset])
HUB_KEY = web.AppKey("console_hub", EventHub)
FLEET_KEY = web.AppKey("console_fleet", FleetMetrics)


def is_console_path(path: str) -> bool:
    return path == "/" or path.startswith(STATIC_PREFIX)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if is_console_path(request.path):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


def _asset_response(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS_KEY].get(name)
    if asset is None:
        raise web.HTTPNotFound()
    # Revalidate every time (a cheap 304): an upgraded server must never run yesterday's script.
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


async def index(request: web.Request) -> web.Response:
    return _asset_response(request, "index.html")


async def static_file(request: web.Request) -> web.Response:
    return _asset_response(request, request.match_info["name"])


def _sse(event: str, data: object, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    # orjson never emits a raw newline, so the data is one `data:` line.
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


async def events_stream(request: web.Request) -> web.StreamResponse:
    """`text/event-stream` of the project's batch events: `ready` first, then `batch` (the CloudEvent),
    `resync` when events were dropped (reload from the API), and `:` comments while idle."""
    project = await authenticate(request)
    hub = request.app[HUB_KEY]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx would otherwise hold the events back
        }
    )
    with hub.subscribe(project) as sub:
        await response.prepare(request)
        try:
            await response.write(_sse("ready", {"project": project}))
            await _pump(request, response, sub)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the page went away between two checks; its subscription ends here all the same
    return response


async def _pump(request: web.Request, response: web.StreamResponse, sub: Subscription) -> None:
    idle = 0.0
    while True:
        # aiohttp does not cancel a handler whose client left; looking at the transport every
        # second frees a closed page's subscription promptly instead of at the next failed write.
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        try:
            async with asyncio.timeout(DISCONNECT_CHECK_SECONDS):
                item = await sub.queue.get()
        except TimeoutError:
            idle += DISCONNECT_CHECK_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                await response.write(b": keepalive\n\n")
            continue
        idle = 0.0
        if item == CLOSED:
            return
        if item == RESYNC:
            await response.write(_sse("resync", {}))
        elif isinstance(item, dict):
            await response.write(_sse("batch", item, str(item.get("id") or "")))
        if sub.take_resync():
            await response.write(_sse("resync", {}))


async def _console_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, db = app[SETTINGS_KEY], app[DB_KEY]
    app[ASSETS_KEY] = load_assets()
    hub = EventHub(settings, BatchStore(db))
    await hub.start()
    fleet = FleetMetrics(app[METRICS_KEY].registry, db, settings.worker_liveness_seconds)
    fleet_task = asyncio.create_task(fleet.run(), name="console-fleet-metrics")
    app[HUB_KEY] = hub
    app[FLEET_KEY] = fleet
    try:
        yield
    finally:
        fleet_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fleet_task
        await hub.stop()


async def _close_streams(app: web.Application) -> None:
    # Runs before aiohttp waits for open requests: without it every open page would hold the
    # shutdown for the whole grace period.
    hub = app.get(HUB_KEY)
    if hub is not None:
        hub.close_streams()


async def _hub_check(app: web.Application) -> None:
    if not app[HUB_KEY].running:
        raise RuntimeError("the console's batch events reader is not running")


def setup_console(app: web.Application) -> None:
    """Serve the console at `/` on `app` (an app from create_service_app)."""
    app.cleanup_ctx.append(_console_ctx)
    app.on_shutdown.append(_close_streams)
    app.on_response_prepare.append(_security_headers)
    add_health_check(app, "console_events", lambda: _hub_check(app))
    app.router.add_get("/", index, allow_head=False)
    app.router.add_get(EVENTS_PATH, events_stream, allow_head=False)
    app.router.add_get(STATIC_PREFIX + "{name:[A-Za-z0-9_.-]+}", static_file, allow_head=False)
