"""Fair, deadline-aware admission through the whole service, on a loopback simulated engine.

One run starts the local stand-ins and the service as separate processes (like bench/service.py), plus
two simulated OpenAI-compatible engines in this process — N slots (a semaphore) and a fixed latency per
request — registered as `upstream` models (`sim-small`: 16 slots x 20 ms; `sim-big`: 256 slots x 200 ms),
one worker each. Then, side by side in one run, printed as ratios:

1. B's 20-line batch alone vs submitted 1 s after A's 20,000-line batch (target B shared/alone <= 2x),
   and A's own time alone vs shared (target within 5%);
2. two projects with equal weights, both with big batches: each one's share of the engine's requests
   while both have work (target 50% +- 10%); then weights 2:1 (target 67% +- 10%);
3. a `24h` batch submitted 1 s after a `336h` batch of the same project while the engine is saturated
   finishes first (deadlines scaled by --scale/3600 for ordering: at scale 1, 24h reads as 24 s, so the
   deadline is as tight against the batch sizes at every scale);
4. occupancy: a 50,000-line batch on 256 slots x 200 ms, upload to download: ideal/actual (target >= 0.95).

A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/fairness.py [--scale 1.0] [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path

import openai
import orjson
import tomli_w
from aiohttp import web

from infra.launcher import Launcher, Ports
from services.api.process import ApiProcess
from services.http.auth import ApiKeyStore
from services.inference.registry import DEFAULT_MODELS_FILE
from services.runtime.child_process import ServiceProcess
from services.settings import Settings
from services.state.projects import ProjectStore
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore

CHAT = "/v1/chat/completions"
POLL_S = 0.05


class SimEngine:
    """An OpenAI-compatible chat server with `slots` requests served at once, each taking `latency_s`;
    it counts requests by the tag at the start of the user message (`<tag>:<n>`)."""

    def __init__(self, slots: int, latency_s: float) -> None:
        self.slots, self.latency_s = slots, latency_s
        self._sem = asyncio.Semaphore(slots)
        self.served: Counter[str] = Counter()
        self.log: list[tuple[float, str]] = []  # (finish time, tag)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> SimEngine:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        tag = str(body["messages"][-1]["content"]).split(":", 1)[0]
        async with self._sem:
            await asyncio.sleep(self.latency_s)
        self.served[tag] += 1
        self.log.append((time.monotonic(), tag))
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        })


def models_file(path: Path, engines: dict[str, tuple[SimEngine, int]]) -> Path:
    with open(DEFAULT_MODELS_FILE, "rb") as f:
        registry = tomllib.load(f)
    for name, (engine, chunk_lines) in engines.items():
        registry["models"][name] = {
            "engine": "upstream", "base_url": engine.url, "endpoints": [CHAT], "max_concurrency": engine.slots,
            "max_retries": 0, "chunk_lines": chunk_lines,
            "description": f"simulated: {engine.slots} slots x {engine.latency_s * 1000:.0f} ms",
        }
    path.write_text(tomli_w.dumps(registry))
    return path


def jsonl(model: str, tag: str, lines: int) -> bytes:
    return b"".join(orjson.dumps({
        "custom_id": f"{tag}-{i}", "method": "POST", "url": CHAT,
        "body": {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": f"{tag}:{i}"}]},
    }) + b"\n" for i in range(lines))


class Bench:
    def __init__(self, settings: Settings, api: ApiProcess) -> None:
        self.settings, self.api = settings, api
        self.clients: dict[str, openai.AsyncOpenAI] = {}

    async def client(self, project: str) -> openai.AsyncOpenAI:
        if project not in self.clients:
            db = open_database(self.settings)
            try:
                key, _ = await ApiKeyStore(db).create(project)
            finally:
                await close_database(db)
            self.clients[project] = openai.AsyncOpenAI(base_url=f"{self.api.base_url}/v1", api_key=key,
                                                       max_retries=0, timeout=600)
        return self.clients[project]

    async def run(self, project: str, model: str, tag: str, lines: int, *, window: str = "336h",
                  delay_s: float = 0.0, download: bool = False) -> float:
        """Upload, wait `delay_s`, create, poll until completed (and download): seconds from create (or upload)."""
        client = await self.client(project)
        data = jsonl(model, tag, lines)
        started = time.perf_counter()
        file_id = (await client.files.create(file=(f"{tag}.jsonl", data), purpose="batch")).id
        if delay_s:
            await asyncio.sleep(delay_s)
        if not download:
            started = time.perf_counter()
        batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window=window)
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(POLL_S)
            batch = await client.batches.retrieve(batch.id)
        if batch.status != "completed" or batch.request_counts is None or batch.request_counts.completed != lines:
            raise RuntimeError(f"batch {batch.id} ({tag}) ended {batch.status}: {batch.request_counts} {batch.errors}")
        if download and batch.output_file_id:
            await (await client.files.content(batch.output_file_id)).aread()
        return time.perf_counter() - started

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()


def share(engine: SimEngine, first: str, second: str, since: float) -> float:
    """first's share of the requests served while both still had work (up to the last one of either's
    earliest finish)."""
    log = [(t, tag) for t, tag in engine.log if t >= since and tag in (first, second)]
    end = min(max(t for t, tag in log if tag == first), max(t for t, tag in log if tag == second))
    counts = Counter(tag for t, tag in log if t <= end)
    return counts[first] / max(1, counts[first] + counts[second])


async def measure(settings: Settings, args: argparse.Namespace, small: SimEngine, big: SimEngine,
                  logs: Path) -> None:
    n = lambda x: max(1, int(x * args.scale))  # noqa: E731
    api = ApiProcess(settings, log_file=logs / "api.log")
    dispatcher = ServiceProcess.dispatcher(settings, log_file=logs / "dispatcher.log")
    workers = [ServiceProcess.worker(settings, m, log_file=logs / f"worker-{m}.log") for m in ("sim-small", "sim-big")]
    await asyncio.gather(api.start(), *(p.spawn().wait_healthy() for p in (dispatcher, *workers)))
    bench = Bench(settings, api)
    db = open_database(settings)
    try:
        await bench.run("warm", "sim-small", "warm", 20)
        await bench.run("warm", "sim-big", "warm", 20)

        # 1. B alone, A alone, then B 1 s after A.
        a_lines, b_lines = n(20_000), 20
        b_alone = await bench.run("pb", "sim-small", "b0", b_lines)
        a_alone = await bench.run("pa", "sim-small", "a0", a_lines)
        a_shared, b_shared = await asyncio.gather(bench.run("pa", "sim-small", "a1", a_lines),
                                                  bench.run("pb", "sim-small", "b1", b_lines, delay_s=1.0))
        print(f"scale {args.scale:g}; sim-small {small.slots} slots x {small.latency_s * 1000:.0f} ms "
              f"({args.small_chunk_lines}-line chunks), sim-big {big.slots} slots x {big.latency_s * 1000:.0f} ms "
              f"({args.big_chunk_lines}-line chunks); one worker each")
        print(f"1. B ({b_lines} lines) alone {b_alone:.2f} s, 1 s after A ({a_lines} lines) {b_shared:.2f} s: "
              f"B shared/alone {b_shared / b_alone:.2f}x (target <= 2x); A alone {a_alone:.2f} s, shared "
              f"{a_shared:.2f} s: A shared/alone {a_shared / a_alone:.3f} (target within 5%)")

        # 2. Shares: equal weights, then 2:1.
        big_lines = n(10_000)
        since = time.monotonic()
        await asyncio.gather(bench.run("pc", "sim-small", "c", big_lines), bench.run("pd", "sim-small", "d", big_lines))
        equal = share(small, "c", "d", since)
        await ProjectStore(db, settings).set("pe", weight=2)
        since = time.monotonic()
        await asyncio.gather(bench.run("pe", "sim-small", "e", big_lines), bench.run("pf", "sim-small", "f", big_lines))
        weighted = share(small, "e", "f", since)
        print(f"2. equal weights: share {equal:.1%} / {1 - equal:.1%} (target 50% +- 10%); weights 2:1: "
              f"{weighted:.1%} / {1 - weighted:.1%} (target 67% +- 10%)")

        # 3. A 24h batch after a 336h batch of the same project, engine saturated.
        finish: dict[str, float] = {}

        async def timed(tag: str, lines: int, window: str, delay: float) -> None:
            await bench.run("pg", "sim-small", tag, lines, window=window, delay_s=delay)
            finish[tag] = time.monotonic()

        await asyncio.gather(timed("long", n(20_000), "336h", 0.0), timed("short", n(2_000), "24h", 1.0))
        order = sorted(finish, key=finish.__getitem__)
        print(f"3. 24h batch ({n(2_000)} lines) submitted 1 s after a 336h batch ({n(20_000)} lines): finished "
              f"first: {order[0]} ({'met' if order[0] == 'short' else 'NOT met'}); "
              f"the 336h batch finished {finish['long'] - finish['short']:.2f} s after")

        # 4. Occupancy on 256 slots x 200 ms, upload to download.
        occ_lines = n(50_000)
        total = await bench.run("po", "sim-big", "o", occ_lines, download=True)
        ideal = occ_lines * big.latency_s / big.slots
        print(f"4. occupancy: {occ_lines} lines on {big.slots} slots x {big.latency_s * 1000:.0f} ms: ideal "
              f"{ideal:.2f} s, actual {total:.2f} s (upload to download): ideal/actual {ideal / total:.2f} "
              f"(target >= 0.95)")
    finally:
        await close_database(db)
        await bench.close()
        for p in (dispatcher, *workers):
            p.stop()
        api.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every batch size (0.1: a quick run)")
    # A chunk's time bounds how soon a newcomer starts: 100 lines are 0.125 s on 16 slots x 20 ms.
    parser.add_argument("--small-chunk-lines", type=int, default=100, help="chunk_lines of sim-small (default 100)")
    parser.add_argument("--big-chunk-lines", type=int, default=1000, help="chunk_lines of sim-big (default 1000)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the services' logs in this folder")
    args = parser.parse_args()
    small, big = await SimEngine(16, 0.020).start(), await SimEngine(256, 0.200).start()
    try:
        with tempfile.TemporaryDirectory(prefix="offhours-bench-fairness-") as tmp:
            state = Path(tmp)
            logs = args.logs or state / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            base = Settings(state_dir=state, s3_bucket="bench-fairness", mongodb_database="bench_fairness",
                            log_json=True, log_level="INFO" if args.logs else "WARNING",
                            models_file=models_file(state / "models.toml", {"sim-small": (small, args.small_chunk_lines),
                                                                               "sim-big": (big, args.big_chunk_lines)}),
                            project_settings_ttl_seconds=1.0, scheduling_deadline_scale=args.scale / 3600,
                            test_model_max_running=100)
            launcher = Launcher(base, state_dir=state, ports=Ports.free(), startup_timeout=90)
            info = await launcher.up()
            try:
                settings = info.apply(base)
                async with ObjectStore(settings) as s3:
                    await s3.ensure_bucket()
                await measure(settings, args, small, big, logs)
            finally:
                await launcher.down()
    finally:
        await small.stop()
        await big.stop()


if __name__ == "__main__":
    asyncio.run(main())
