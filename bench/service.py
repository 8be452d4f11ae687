"""The whole service against `offhours run-batch` on the same file: what do Kafka, MongoDB and S3 cost?

One run starts the local stand-ins (infra.launcher, free ports, a temporary state folder) and the
service as separate processes, exactly as deployed: `offhours api`, `offhours dispatcher`, and
`--workers` × `offhours worker --model null-model` (the zero-cost engine, so what is measured is
the service's own overhead). Then:

1. one 50,000-line batch through the service with the openai SDK — upload, create, poll until
   `completed`, download the output (and error) file — timed end to end, with the phases
   (upload, create -> in_progress, in_progress -> completed, download);
2. `offhours run-batch` on the same file, as a process, in the same run;
3. four concurrent batches of 10,000 lines.

It prints lines/s of both, the service/run-batch ratio (target >= 0.5; median of interleaved rounds,
since the machine may be shared), the time from create to `in_progress`, the server-side phases (from
the batch document and its ledger), the CPU seconds every process spent on the batch (the api, the
dispatcher, the workers and the Kafka/MongoDB/S3 servers, against run-batch's own), and each service
process's peak RSS (VmHWM from /proc). A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/service.py [--lines 50000] [--workers 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson

from infra.launcher import Launcher, Ports
from services.api.process import ApiProcess
from services.http.auth import ApiKeyStore
from services.runtime.child_process import ServiceProcess
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore

MIB = 1024 * 1024
CHAT = "/v1/chat/completions"
POLL_S = 0.02


def write_input(path: Path, lines: int, tag: str = "") -> int:
    with path.open("wb") as f:
        for i in range(lines):
            f.write(orjson.dumps({
                "custom_id": f"{tag}req-{i}", "method": "POST", "url": CHAT,
                "body": {"model": "null-model", "max_tokens": 16,
                         "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                      {"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}]},
            }) + b"\n")
    return path.stat().st_size


@dataclass
class BatchTiming:
    lines: int
    batch_id: str = ""
    upload_s: float = 0.0
    to_in_progress_s: float = 0.0
    to_completed_s: float = 0.0
    download_s: float = 0.0
    total_s: float = 0.0
    output_bytes: int = 0


async def run_batch_via_service(client: openai.AsyncOpenAI, path: Path, lines: int, out_dir: Path) -> BatchTiming:
    t = BatchTiming(lines)
    started = time.perf_counter()
    with path.open("rb") as f:
        file_id = (await client.files.create(file=(path.name, f), purpose="batch")).id
    t.upload_s = time.perf_counter() - started
    created_at = time.perf_counter()
    batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    t.batch_id = batch.id
    while batch.status == "validating":
        await asyncio.sleep(POLL_S)
        batch = await client.batches.retrieve(batch.id)
    t.to_in_progress_s = time.perf_counter() - created_at
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(5 * POLL_S)  # coarser: polling is load on the api and MongoDB too
        batch = await client.batches.retrieve(batch.id)
    t.to_completed_s = time.perf_counter() - created_at
    if batch.status != "completed" or batch.request_counts is None or batch.request_counts.completed != lines:
        raise RuntimeError(f"batch {batch.id} ended {batch.status}: {batch.request_counts} {batch.errors}")
    downloaded = time.perf_counter()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is None:
            continue
        async with client.files.with_streaming_response.content(file_id) as resp:
            with (out_dir / f"{batch.id}-{file_id}.jsonl").open("wb") as f:
                async for chunk in resp.iter_bytes(MIB):
                    f.write(chunk)
                    t.output_bytes += len(chunk)
    t.download_s = time.perf_counter() - downloaded
    t.total_s = time.perf_counter() - started
    return t


def run_batch_cli(settings: Settings, path: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "services.cli.main", "run-batch", "-i", str(path), "-o", str(out),
         "--model", "null-model", "--no-progress", "-q",
         *(["--models-file", str(settings.models_file)] if settings.models_file else [])],
        check=True, env={"OFFHOURS_LOG_JSON": "true", "PATH": "/usr/bin:/bin"},
    )
    return time.perf_counter() - started


async def server_timeline(settings: Settings, batch_id: str) -> dict[str, float]:
    """Phases of one batch from its document and its chunk ledger (timestamps written by the services)."""
    db = open_database(settings)
    try:
        doc = await db["batches"].find_one({"_id": batch_id})
        chunks = await db["batch_chunks"].find({"batch_id": batch_id}, {"finished_at": 1}).to_list(None)
    finally:
        await close_database(db)
    assert doc is not None
    finished = sorted(c["finished_at"] for c in chunks if c.get("finished_at"))
    return {
        "validating": doc["in_progress_at"] - doc["created_at"],
        "in_progress->first result": finished[0] - doc["in_progress_at"],
        "first->last result": finished[-1] - finished[0],
        "last result->finalizing": doc["finalizing_at"] - finished[-1],
        "finalizing": doc["completed_at"] - doc["finalizing_at"],
    }


def histogram(metrics: str, name: str) -> tuple[float, float]:
    """(count, sum) of a Prometheus histogram in /metrics text (summed over processes' texts)."""
    count = total = 0.0
    for line in metrics.splitlines():
        if line.startswith(f"{name}_count"):
            count += float(line.split()[-1])
        elif line.startswith(f"{name}_sum"):
            total += float(line.split()[-1])
    return count, total


def mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure(settings: Settings, args: argparse.Namespace, workdir: Path, infra_pids: dict[str, int]) -> None:
    db = open_database(settings)
    key, _ = await ApiKeyStore(db).create("bench")
    await close_database(db)
    logs = args.logs or workdir / "service-logs"
    logs.mkdir(parents=True, exist_ok=True)
    api = ApiProcess(settings, log_file=logs / "api.log")
    dispatcher = ServiceProcess.dispatcher(settings, log_file=logs / "dispatcher.log")
    workers = [ServiceProcess.worker(settings, "null-model", log_file=logs / f"worker-{i}.log")
               for i in range(args.workers)]
    procs: list[Any] = [dispatcher, *workers]
    await asyncio.gather(api.start(), *(p.spawn().wait_healthy() for p in procs))
    client = openai.AsyncOpenAI(base_url=f"{api.base_url}/v1", api_key=key, max_retries=0, timeout=600)
    pids = {"api": api.pid, "dispatcher": dispatcher.pid, **{f"worker {i}": w.pid for i, w in enumerate(workers)},
            **infra_pids}
    try:
        # Warm-up: consumer groups joined, topics created, connections open — a service is long-running.
        warm = workdir / "warm.jsonl"
        write_input(warm, 100, "warm-")
        await run_batch_via_service(client, warm, 100, workdir)

        big = workdir / "big.jsonl"
        size = write_input(big, args.lines)
        # Interleaved rounds: a busy moment on the (shared) machine hits one round of both paths.
        rounds: list[tuple[BatchTiming, float, dict[str, float], float]] = []
        for _ in range(args.rounds):
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            service = await run_batch_via_service(client, big, args.lines, workdir)
            service_cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            cli_cpu = children_cpu_seconds()
            cli_s = run_batch_cli(settings, big, workdir / "cli-out.jsonl")
            rounds.append((service, cli_s, service_cpu, children_cpu_seconds() - cli_cpu))
        best = min(rounds, key=lambda r: r[0].total_s)
        timeline = await server_timeline(settings, best[0].batch_id)

        small = [workdir / f"c{i}.jsonl" for i in range(4)]
        for i, p in enumerate(small):
            write_input(p, 10_000, f"c{i}-")
        started = time.perf_counter()
        concurrent = await asyncio.gather(*(run_batch_via_service(client, p, 10_000, workdir) for p in small))
        concurrent_s = time.perf_counter() - started

        phases = {name: histogram(await dispatcher.metrics_text(), f"offhours_dispatcher_{name}_seconds")
                  for name in ("validation", "finalize")}
        phases["worker chunk"] = histogram("".join([await w.metrics_text() for w in workers]),
                                           "offhours_worker_chunk_seconds")
        rss = {"api": api.peak_rss_bytes(), "dispatcher": dispatcher.peak_rss_bytes()}
        for i, w in enumerate(workers):
            rss[f"worker {i}"] = w.peak_rss_bytes()
    finally:
        await client.close()
        for p in procs:
            p.stop()
        api.stop()

    n = args.lines
    ratios = sorted((n / svc.total_s) / (n / cli) for svc, cli, _, _ in rounds)
    service, cli_s, service_cpu, cli_cpu = best
    print(f"input: {n} lines, {mib(size)} ({size} bytes); null-model; {args.workers} worker(s); "
          f"{args.rounds} interleaved rounds (best round shown)")
    print(f"  service end to end      {service.total_s:7.2f} s  {n / service.total_s:9.0f} lines/s  "
          f"(upload {service.upload_s:.2f} s, create->in_progress {service.to_in_progress_s:.2f} s, "
          f"create->completed {service.to_completed_s:.2f} s, download {service.download_s:.2f} s "
          f"of {mib(service.output_bytes)})")
    print("  server-side timeline    " + ", ".join(f"{k} {v:.2f} s" for k, v in timeline.items()))
    print(f"  offhours run-batch      {cli_s:7.2f} s  {n / cli_s:9.0f} lines/s  (process start included; "
          f"rounds: {', '.join(f'{c:.2f}' for _, c, _, _ in rounds)} s)")
    print(f"  ratio service/run-batch {ratios[len(ratios) // 2]:7.2f}   median of rounds "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); target >= 0.5")
    print(f"  CPU for the batch       service {sum(service_cpu.values()):.2f} s ("
          + ", ".join(f"{k} {v:.2f}" for k, v in service_cpu.items()) + f"); run-batch {cli_cpu:.2f} s")
    print(f"  4 concurrent x 10,000   {concurrent_s:7.2f} s  {40_000 / concurrent_s:9.0f} lines/s in total; "
          "create->in_progress " + ", ".join(f"{t.to_in_progress_s:.2f}" for t in concurrent) + " s; "
          "create->completed " + ", ".join(f"{t.to_completed_s:.2f}" for t in concurrent) + " s")
    print("  time inside the services (all batches): " + ", ".join(
        f"{name} {n:.0f} x {total / max(n, 1) * 1000:.0f} ms" for name, (n, total) in phases.items()))
    print("  peak RSS (VmHWM)        " + ", ".join(f"{name} {mib(v)}" for name, v in rss.items()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000, help="lines of the big batch (default 50000)")
    parser.add_argument("--workers", type=int, default=1, help="null-model worker processes (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of the big batch on both paths")
    parser.add_argument("--models-file", type=Path, default=None,
                        help="another model registry (e.g. to try a different null-model chunk_lines)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the services' INFO logs in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="offhours-bench-service-") as tmp:
        state = Path(tmp)
        base = Settings(state_dir=state, s3_bucket="bench-service", mongodb_database="bench_service",
                        log_json=True, log_level="INFO" if args.logs else "WARNING", models_file=args.models_file)
        launcher = Launcher(base, state_dir=state, ports=Ports.free(), startup_timeout=90)
        info = await launcher.up()
        try:
            settings = info.apply(base)
            async with ObjectStore(settings) as s3:
                await s3.ensure_bucket()
            await measure(settings, args, state, {f"{name} server": rec.pid for name, rec in info.processes.items()})
        finally:
            await launcher.down()


if __name__ == "__main__":
    asyncio.run(main())
