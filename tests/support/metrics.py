"""Reading a service process's Prometheus metrics (its ops port), for tests that count what it did."""

from __future__ import annotations

import re

from services.runtime.child_process import ServiceProcess


async def worker_chunk_counts(worker: ServiceProcess) -> dict[str, float]:
    """The worker's chunk messages handled so far, by outcome (done, skipped, stale, ...)."""
    text = await worker.metrics_text()
    return {m[0]: float(m[1]) for m in re.findall(r'offhours_worker_chunks_total\{outcome="(\w+)"\} (\S+)', text)}
