"""The files sweeper: a periodic task in every process that serves the Files API.

It deletes expired files, finishes deletes a crash interrupted, and reclaims uploads whose
process died (FileStore.sweep). Several processes may sweep at once: each file is claimed by
compare-and-set, so it is removed once. Reads never wait for it: expired files are hidden by
the queries themselves the moment they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from services.settings import Settings
from services.state.files import FileStore

log = logging.getLogger(__name__)


async def sweep_forever(store: FileStore, settings: Settings) -> None:
    while True:
        try:
            report = await store.sweep(stale_upload_seconds=settings.files_stale_upload_seconds)
            if report.total:
                log.info(
                    "swept %d expired, %d deleted, %d abandoned upload(s)",
                    report.expired, report.deleted, report.stale_uploads,
                )
        except Exception:
            # MongoDB or S3 briefly away: try again next round rather than dying silently.
            log.warning("file sweep failed; retrying in %ss", settings.files_sweep_interval_seconds, exc_info=True)
        await asyncio.sleep(settings.files_sweep_interval_seconds)


def sweeper_ctx(
    store_key: web.AppKey[FileStore], settings_key: web.AppKey[Settings]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx running `sweep_forever` for the app's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sweep_forever(app[store_key], app[settings_key]), name="files-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
