"""Process plumbing of the background services (dispatcher, worker): stop signals and GC tuning."""

from __future__ import annotations

import asyncio
import gc
import signal


def tune_gc() -> None:
    """Fewer garbage-collector passes on the per-line hot paths (validation pass, chunk pipeline).

    Each line allocates a few short-lived dicts; with the default thresholds the collector keeps
    re-walking everything alive (the same 15-20 % run-batch measured). Start-up objects (modules,
    an engine's weights) are frozen out of collection: they are never garbage.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT set `stop`: the loops finish the record in hand (uncommitted work is redelivered)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
