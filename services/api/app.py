"""The `api` process: every public HTTP API on one port, so the SDK needs one `base_url`.

Each service exposes a `setup_*(app)` that mounts its routes and resources on a shared app;
this module only lists them, by name. `offhours api --only files` (or `batches`, ...) serves a
subset, which is how the APIs run as separate processes behind one router (see the Procfile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web

from services.batches.app import setup_batches
from services.console.app import setup_console
from services.files.app import setup_files
from services.http.service import create_service_app
from services.notifier.routes import setup_webhooks
from services.settings import Settings

Mounter = Callable[[web.Application], None]

# The APIs the `api` process serves, in mount order; a new API adds its `setup_*` here.
APIS: dict[str, Mounter] = {
    "files": setup_files,
    "batches": setup_batches,
    "webhooks": setup_webhooks,
    # The web console at `/`: a browser client of the APIs above, plus its live event stream.
    "console": setup_console,
}
MOUNTERS: tuple[Mounter, ...] = tuple(APIS.values())


def mounters_for(names: Iterable[str]) -> tuple[Mounter, ...]:
    """The mounters of the named APIs; ValueError for an unknown name."""
    unknown = sorted(set(names) - set(APIS))
    if unknown:
        raise ValueError(f"unknown API(s) {', '.join(unknown)}; known: {', '.join(APIS)}")
    wanted = set(names)
    return tuple(mount for name, mount in APIS.items() if name in wanted)


def create_api_app(settings: Settings, mounters: tuple[Mounter, ...] = MOUNTERS) -> web.Application:
    app = create_service_app(
        settings,
        title="offhours",
        description="Self-hosted, OpenAI-compatible Files and Batch API. Authenticate with `Authorization: Bearer sk-oh-…`.",
    )
    for mount in mounters:
        mount(app)
    return app
