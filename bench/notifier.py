"""Benchmark: webhook fan-out through the notifier vs a plain aiohttp client, in the same run.

2,000 `batch.completed` events fanned out to 10 endpoints on loopback (one of them slow): 20,000
deliveries. The notifier path is the real one — events published to Kafka, matched, one delivery
document each in MongoDB, signed, POSTed, results recorded — running in this process against the
local Tansu / SecantusDB servers. The baseline POSTs the same payloads to the same receivers with a
plain aiohttp client (same per-endpoint concurrency, no signing, no database, no Kafka). Both print
deliveries/s and the p50/p99 time from "event available" to "POST received by the receiver"
(notifier: from the event's publish acknowledgement; baseline: from the moment all payloads are
handed to the client), and the ratio.

    .venv/bin/python bench/notifier.py [--events 2000] [--endpoints 10] [--slow-ms 50]

Starts its own Kafka/MongoDB/S3 stand-ins on free ports (infra/launcher.py) and removes them after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from events.bus import Producer
from events.topics import batch_events_topic, ensure_topics
from infra.launcher import Launcher, Ports
from schemas.events import CLOUDEVENTS_CONTENT_TYPE, batch_event
from services.batches.store import BATCHES_COLLECTION
from services.notifier.endpoints import EndpointStore
from services.notifier.secrets import SecretBox
from services.notifier.service import Notifier
from services.settings import Settings
from services.stores.mongo import close_database, open_database

PROJECT = "bench"


@dataclass
class Receiver:
    delay_s: float = 0.0
    arrivals: dict[str, float] = field(default_factory=dict)  # batch id -> first arrival
    count: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        batch_id = orjson.loads(body)["data"]["id"]
        self.arrivals.setdefault(batch_id, time.perf_counter())
        self.count += 1
        return web.Response(status=204)


async def start_receivers(n: int, slow_s: float) -> tuple[list[Receiver], list[web.AppRunner]]:
    receivers, runners = [], []
    for i in range(n):
        receiver = Receiver(delay_s=slow_s if i == 0 else 0.0)
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        receivers.append(receiver)
        runners.append(runner)
    return receivers, runners


def summarize(name: str, receivers: Sequence[Receiver], start: dict[str, float], t0: float) -> dict[str, float]:
    lat_all = [r.arrivals[b] - start[b] for r in receivers for b in r.arrivals]
    lat_fast = [r.arrivals[b] - start[b] for r in receivers if not r.delay_s for b in r.arrivals]
    end_all = max(t for r in receivers for t in r.arrivals.values())
    end_fast = max(t for r in receivers if not r.delay_s for t in r.arrivals.values())
    n_fast = sum(len(r.arrivals) for r in receivers if not r.delay_s)

    def q(values: list[float], p: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[p - 1] * 1000

    out = {
        "deliveries": len(lat_all),
        "per_s_all": len(lat_all) / (end_all - t0),
        "per_s_fast": n_fast / (end_fast - t0),
        "p50_fast_ms": q(lat_fast, 50),
        "p99_fast_ms": q(lat_fast, 99),
        "p50_all_ms": q(lat_all, 50),
        "p99_all_ms": q(lat_all, 99),
    }
    print(
        f"{name:<9} {out['deliveries']:>6} deliveries  {out['per_s_all']:>7.0f}/s all  {out['per_s_fast']:>7.0f}/s "
        f"fast endpoints  p50/p99 fast {out['p50_fast_ms']:>7.1f}/{out['p99_fast_ms']:>7.1f} ms  "
        f"p50/p99 all {out['p50_all_ms']:>7.1f}/{out['p99_all_ms']:>7.1f} ms"
    )
    return out


async def baseline(receivers: list[Receiver], bodies: dict[str, bytes], per_endpoint: int) -> dict[str, float]:
    """A plain aiohttp client: every payload to every receiver, per-endpoint concurrency like the notifier's."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(receiver: Receiver, slots: asyncio.Semaphore, body: bytes) -> None:
            async with slots, http.post(receiver.url, data=body,
                                        headers={"content-type": "application/json"}) as resp:
                await resp.read()

        t0 = time.perf_counter()
        start = dict.fromkeys(bodies, t0)
        tasks = []
        for receiver in receivers:
            slots = asyncio.Semaphore(per_endpoint)
            tasks += [asyncio.create_task(one(receiver, slots, body)) for body in bodies.values()]
        await asyncio.gather(*tasks)
    return summarize("baseline", receivers, start, t0)


async def notifier_run(settings: Settings, receivers: list[Receiver], n_events: int) -> dict[str, float]:
    db = open_database(settings)
    try:
        endpoints = EndpointStore(db, SecretBox.from_settings(settings))
        await endpoints.ensure_indexes()
        for i, receiver in enumerate(receivers):
            await endpoints.create(PROJECT, url=receiver.url, name=f"r{i}", description=None,
                                   event_types=["batch.completed"], enabled=True)
        batch_ids = [f"batch_bench{i:019d}" for i in range(n_events)]
        await db[BATCHES_COLLECTION].insert_many([{"_id": b, "project": PROJECT} for b in batch_ids])
        topic = batch_events_topic(settings)
        await ensure_topics(settings, [topic])

        notifier = Notifier(settings, db)
        await notifier.prepare()
        stop = asyncio.Event()
        runner = asyncio.create_task(notifier.run(stop))
        await asyncio.sleep(8)  # let the consumer join its group before the clock starts

        start: dict[str, float] = {}
        async with Producer(settings, client_id="bench") as producer:
            t0 = time.perf_counter()
            window = asyncio.Semaphore(256)

            async def publish(batch_id: str) -> None:
                batch = {"id": batch_id, "object": "batch", "status": "completed", "endpoint": "/v1/chat/completions",
                         "input_file_id": "file-x", "completion_window": "24h", "created_at": 0}
                event = batch_event("batch.completed", batch).model_dump(mode="json")
                async with window:
                    await producer.send(topic, batch_id, orjson.dumps(event), {"content-type": CLOUDEVENTS_CONTENT_TYPE})
                start[batch_id] = time.perf_counter()

            await asyncio.gather(*(publish(b) for b in batch_ids))
            published = time.perf_counter() - t0
            total = n_events * len(receivers)
            deadline = time.monotonic() + 600
            while sum(len(r.arrivals) for r in receivers) < total and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        stop.set()
        await runner
        print(f"(published {n_events} events in {published:.1f}s)")
        return summarize("notifier", receivers, start, t0)
    finally:
        await close_database(db)


async def main(args: argparse.Namespace) -> None:
    state = Path(tempfile.mkdtemp(prefix="offhours-bench-notifier-"))
    base = Settings(state_dir=state, s3_access_key_id="bench", s3_secret_access_key="bench-secret-key",
                    s3_bucket="bench", log_json=False, log_level="WARNING")
    launcher = Launcher(base, state_dir=state, ports=Ports.free(), startup_timeout=90)
    info = await launcher.up()
    try:
        settings = info.apply(base).model_copy(update={
            "topic_prefix": "bench", "mongodb_database": "bench_notifier",
            "webhook_allowlist": ["127.0.0.1/32"], "webhook_poll_interval_seconds": 0.5,
        })
        bodies = {
            f"batch_bench{i:019d}": orjson.dumps({"id": f"evt_{i:032x}", "object": "event", "type": "batch.completed",
                                                  "created_at": 0, "data": {"id": f"batch_bench{i:019d}"}})
            for i in range(args.events)
        }
        receivers, runners = await start_receivers(args.endpoints, args.slow_ms / 1000)
        print(f"{args.events} events x {args.endpoints} endpoints (1 answers after {args.slow_ms:g} ms), "
              f"per-endpoint concurrency {settings.webhook_max_concurrency_per_endpoint}")
        try:
            base_result = await baseline(receivers, bodies, settings.webhook_max_concurrency_per_endpoint)
            for r in receivers:
                r.arrivals.clear()
                r.count = 0
            note = await notifier_run(settings, receivers, args.events)
            duplicates = sum(r.count for r in receivers) - sum(len(r.arrivals) for r in receivers)
            print(f"duplicate POSTs: {duplicates}")
        finally:
            for runner in runners:
                await runner.cleanup()
        print(
            f"ratio baseline/notifier: throughput (fast endpoints) {base_result['per_s_fast'] / note['per_s_fast']:.1f}x, "
            f"throughput (all) {base_result['per_s_all'] / note['per_s_all']:.1f}x, "
            f"p50 latency (fast) {note['p50_fast_ms'] / base_result['p50_fast_ms']:.1f}x, "
            f"p99 latency (fast) {note['p99_fast_ms'] / base_result['p99_fast_ms']:.1f}x"
        )
    finally:
        with contextlib.suppress(Exception):
            await launcher.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--slow-ms", type=float, default=50.0, help="answer delay of the slow endpoint")
    asyncio.run(main(parser.parse_args()))
