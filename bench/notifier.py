"""Benchmark: webhook fan-out through the notifier vs a plain aiohttp client, in the same run.

Burst: 2,000 `batch.completed` events fanned out to 10 endpoints on loopback (one of them slow):
20,000 deliveries. The notifier path is the real one — events published to Kafka, matched, one
delivery document each in MongoDB, signed, POSTed, outcomes recorded — running in this process
against local Tansu / SecantusDB servers it starts itself. The baseline POSTs the same payloads to
the same receivers with a plain aiohttp client (same per-endpoint concurrency; no signing, no
database, no Kafka). Both report deliveries/s and p50/p99 of "event available -> POST received"
(notifier: from the event's publish acknowledgement; baseline: from the moment all payloads are
handed to the client), for the 9 fast endpoints and for all 10, and the ratios.

Paced: then 50 events at 10 per second (no backlog), the same latency measured for each path —
the notifier's own overhead per event (Kafka fetch, MongoDB reads and insert, signing).

    .venv/bin/python bench/notifier.py [--events 2000] [--endpoints 10] [--slow-ms 50] [--paced 50]
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
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase

from events.bus import Producer
from events.topics import batch_events_topic, ensure_topics
from infra.launcher import Launcher, Ports
from schemas.events import CLOUDEVENTS_CONTENT_TYPE, batch_event
from services.notifier.endpoints import EndpointStore
from services.notifier.secrets import SecretBox
from services.notifier.service import Notifier
from services.settings import Settings
from services.state.batches import BATCHES_COLLECTION
from services.stores.mongo import close_database, open_database

PROJECT = "bench"
PACED_RATE = 10.0  # events per second in the paced phase


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
        self.arrivals.setdefault(orjson.loads(body)["data"]["id"], time.perf_counter())
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


def reset(receivers: Sequence[Receiver]) -> None:
    for r in receivers:
        r.arrivals.clear()
        r.count = 0


async def wait_for_all(receivers: Sequence[Receiver], batch_ids: Sequence[str], timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while any(len(r.arrivals) < len(batch_ids) for r in receivers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sum(len(r.arrivals) for r in receivers)} deliveries arrived")
        await asyncio.sleep(0.05)


def quantile_ms(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] * 1000


def summarize(name: str, receivers: Sequence[Receiver], start: dict[str, float], t0: float | None) -> dict[str, float]:
    """Latency quantiles (fast endpoints, all); throughput too when `t0` (the run's start) is given."""
    fast = [r for r in receivers if not r.delay_s]
    lat_fast = [r.arrivals[b] - start[b] for r in fast for b in r.arrivals]
    lat_all = [r.arrivals[b] - start[b] for r in receivers for b in r.arrivals]
    out = {"deliveries": len(lat_all), "p50_fast_ms": quantile_ms(lat_fast, 50), "p99_fast_ms": quantile_ms(lat_fast, 99),
           "p50_all_ms": quantile_ms(lat_all, 50), "p99_all_ms": quantile_ms(lat_all, 99)}
    line = f"  {name:<9} {out['deliveries']:>6} deliveries"
    if t0 is not None:
        end_all = max(t for r in receivers for t in r.arrivals.values())
        end_fast = max(t for r in fast for t in r.arrivals.values())
        out["per_s_all"] = len(lat_all) / (end_all - t0)
        out["per_s_fast"] = len(lat_fast) / (end_fast - t0)
        line += f"  {out['per_s_fast']:>6.0f}/s fast  {out['per_s_all']:>6.0f}/s all"
    line += (f"  p50/p99 fast {out['p50_fast_ms']:>8.1f}/{out['p99_fast_ms']:>8.1f} ms"
             f"  all {out['p50_all_ms']:>8.1f}/{out['p99_all_ms']:>8.1f} ms")
    print(line, flush=True)
    return out


def payload(batch_id: str) -> bytes:
    return orjson.dumps({"id": "evt_" + batch_id[-32:], "object": "event", "type": "batch.completed",
                         "created_at": 0, "data": {"id": batch_id}})


class Baseline:
    """A plain aiohttp client: each payload to each receiver, per-endpoint concurrency like the notifier's."""

    def __init__(self, receivers: Sequence[Receiver], per_endpoint: int) -> None:
        self.receivers = receivers
        self.slots = {r.url: asyncio.Semaphore(per_endpoint) for r in receivers}
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def post(self, receiver: Receiver, body: bytes) -> None:
        async with self.slots[receiver.url], self.http.post(
            receiver.url, data=body, headers={"content-type": "application/json"}
        ) as resp:
            await resp.read()

    async def fan_out(self, batch_id: str) -> None:
        body = payload(batch_id)
        await asyncio.gather(*(self.post(r, body) for r in self.receivers))

    async def close(self) -> None:
        await self.http.close()


async def baseline_burst(client: Baseline, batch_ids: Sequence[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    await asyncio.gather(*(client.fan_out(b) for b in batch_ids))
    return summarize("baseline", client.receivers, dict.fromkeys(batch_ids, t0), t0)


async def baseline_paced(client: Baseline, batch_ids: Sequence[str]) -> dict[str, float]:
    start: dict[str, float] = {}
    tasks = []
    for batch_id in batch_ids:
        start[batch_id] = time.perf_counter()
        tasks.append(asyncio.create_task(client.fan_out(batch_id)))
        await asyncio.sleep(1 / PACED_RATE)
    await asyncio.gather(*tasks)
    return summarize("baseline", client.receivers, start, None)


class Publisher:
    """Publishes `batch.completed` CloudEvents as the batches service does; remembers each ack time."""

    def __init__(self, settings: Settings, db: AsyncDatabase[Any]) -> None:
        self.settings = settings
        self.db = db
        self.topic = batch_events_topic(settings)
        self.producer = Producer(settings, client_id="bench")
        self.acked: dict[str, float] = {}

    async def register(self, batch_ids: Sequence[str]) -> None:
        """The notifier finds a batch's project in the batches collection."""
        await self.db[BATCHES_COLLECTION].insert_many([{"_id": b, "project": PROJECT} for b in batch_ids])

    async def publish(self, batch_id: str) -> None:
        batch = {"id": batch_id, "object": "batch", "status": "completed", "endpoint": "/v1/chat/completions",
                 "input_file_id": "file-bench", "completion_window": "24h", "created_at": 0}
        event = batch_event("batch.completed", batch).model_dump(mode="json")
        await self.producer.send(self.topic, batch_id, orjson.dumps(event), {"content-type": CLOUDEVENTS_CONTENT_TYPE})
        self.acked[batch_id] = time.perf_counter()


async def notifier_burst(pub: Publisher, receivers: Sequence[Receiver], batch_ids: Sequence[str]) -> dict[str, float]:
    window = asyncio.Semaphore(256)

    async def one(batch_id: str) -> None:
        async with window:
            await pub.publish(batch_id)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batch_ids))
    await wait_for_all(receivers, batch_ids)
    return summarize("notifier", receivers, pub.acked, t0)


async def notifier_paced(pub: Publisher, receivers: Sequence[Receiver], batch_ids: Sequence[str]) -> dict[str, float]:
    for batch_id in batch_ids:
        await pub.publish(batch_id)
        await asyncio.sleep(1 / PACED_RATE)
    await wait_for_all(receivers, batch_ids)
    return summarize("notifier", receivers, pub.acked, None)


async def run(settings: Settings, args: argparse.Namespace) -> None:
    burst_ids = [f"batch_burst{i:021d}" for i in range(args.events)]
    paced_ids = [f"batch_paced{i:021d}" for i in range(args.paced)]
    receivers, runners = await start_receivers(args.endpoints, args.slow_ms / 1000)
    per_endpoint = settings.webhook_max_concurrency_per_endpoint
    client = Baseline(receivers, per_endpoint)
    db = open_database(settings)
    pub = Publisher(settings, db)
    try:
        endpoints = EndpointStore(db, SecretBox.from_settings(settings))
        await endpoints.ensure_indexes()
        for i, receiver in enumerate(receivers):
            await endpoints.create(PROJECT, url=receiver.url, name=f"r{i}", description=None,
                                   event_types=["batch.completed"], enabled=True)
        await pub.register([*burst_ids, *paced_ids])
        await ensure_topics(settings, [pub.topic])
        await pub.producer.start()

        print(f"burst: {args.events} events x {args.endpoints} endpoints = {args.events * args.endpoints} deliveries "
              f"(1 endpoint answers after {args.slow_ms:g} ms; {per_endpoint} in flight per endpoint)")
        base = await baseline_burst(client, burst_ids)
        reset(receivers)
        notifier = Notifier(settings, db)
        await notifier.prepare()
        stop = asyncio.Event()
        loops = asyncio.create_task(notifier.run(stop))
        await asyncio.sleep(8)  # the consumer joins its group before the clock starts
        note = await notifier_burst(pub, receivers, burst_ids)
        duplicates = sum(r.count for r in receivers) - sum(len(r.arrivals) for r in receivers)
        print(f"  duplicate POSTs: {duplicates}")
        print(f"  baseline/notifier: throughput fast {base['per_s_fast'] / note['per_s_fast']:.1f}x, "
              f"all {base['per_s_all'] / note['per_s_all']:.1f}x; notifier/baseline latency p50 fast "
              f"{note['p50_fast_ms'] / base['p50_fast_ms']:.1f}x, p99 fast {note['p99_fast_ms'] / base['p99_fast_ms']:.1f}x")

        if paced_ids:
            print(f"paced: {args.paced} events at {PACED_RATE:g}/s x {args.endpoints} endpoints")
            reset(receivers)
            await asyncio.sleep(2)  # let the burst's last results be written
            note_p = await notifier_paced(pub, receivers, paced_ids)
            reset(receivers)
            base_p = await baseline_paced(client, paced_ids)
            print(f"  notifier - baseline: p50 fast +{note_p['p50_fast_ms'] - base_p['p50_fast_ms']:.1f} ms, "
                  f"p99 fast +{note_p['p99_fast_ms'] - base_p['p99_fast_ms']:.1f} ms")
        stop.set()
        await loops
    finally:
        await pub.producer.stop()
        await client.close()
        await close_database(db)
        for runner in runners:
            await runner.cleanup()


async def main(args: argparse.Namespace) -> None:
    state = Path(tempfile.mkdtemp(prefix="offhours-bench-notifier-"))
    base = Settings(state_dir=state, s3_access_key_id="bench", s3_secret_access_key="bench-secret-key",
                    s3_bucket="bench", log_json=False, log_level="WARNING")
    launcher = Launcher(base, state_dir=state, ports=Ports.free(), startup_timeout=90)
    info = await launcher.up()
    try:
        settings = info.apply(base).model_copy(update={
            "topic_prefix": "bench", "mongodb_database": "bench_notifier", "webhook_allowlist": ["127.0.0.1/32"],
        })
        await run(settings, args)
    finally:
        with contextlib.suppress(Exception):
            await launcher.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="events in the burst")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints (the first one is slow)")
    parser.add_argument("--slow-ms", type=float, default=50.0, help="answer delay of the slow endpoint")
    parser.add_argument("--paced", type=int, default=50, help="events in the paced phase (0: skip it)")
    asyncio.run(main(parser.parse_args()))
