"""Files API throughput next to S3 itself: how much does going through the api cost?

One run starts the local stand-ins (infra.launcher, free ports, a temporary state folder) and a
real `offhours api` process, then moves the same 200 MB file (a) through the api — upload with
the openai SDK's form (`POST /v1/files`), download from `/v1/files/{id}/content` — and (b)
straight to the same rclone S3 server with aioboto3 (services.stores.s3.ObjectStore: the same
8 MiB multipart parts the api writes, the same 1 MiB streamed reads). Each transfer runs
`--rounds` times, interleaved with the others; medians are reported (the machine is shared). Both purposes are measured:
`user_data` (bytes only) and `batch` (the JSONL shape check runs on every line while streaming).

It prints MiB/s for each path, the api/S3 ratio per round and its median (target >= 0.8), the api
process's CPU seconds per GiB moved (robust to a busy machine, unlike wall time) and its peak RSS
(VmHWM), which must stay far below the file size. A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/files.py [--mb 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp

from infra.launcher import Launcher, Ports
from services.api.process import ApiProcess
from services.http.auth import ApiKeyStore
from services.settings import Settings
from services.stores.mongo import close_database, open_database
from services.stores.s3 import ObjectStore

MIB = 1024 * 1024
CHUNK = MIB


def make_jsonl(total: int) -> bytes:
    """≈ `total` bytes of batch request lines (6 KiB each, well under the 50,000-line limit)."""
    size = 6 * 1024
    lines = []
    for i in range(max(1, total // size)):
        head = b'{"custom_id": "r%d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "p": "' % i
        lines.append(head + b"x" * (size - len(head) - 4) + b'"}}\n')
    return b"".join(lines)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(view), CHUNK):
        yield view[i : i + CHUNK].tobytes()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(settings: Settings, mb: int, rounds: int, workdir: Path) -> None:
    data = make_jsonl(mb * MIB)
    size = len(data)
    db = open_database(settings)
    key, _ = await ApiKeyStore(db).create("bench")
    await close_database(db)
    api = await ApiProcess(settings, log_file=workdir / "api.log").start()
    auth = {"Authorization": f"Bearer {key}"}
    seconds: dict[str, list[float]] = {}
    api_cpu: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession() as http, ObjectStore(settings) as s3:
            file_ids: dict[str, str] = {}

            def api_upload(purpose: str) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    form = aiohttp.FormData()
                    form.add_field("purpose", purpose)
                    form.add_field("file", chunks(data), filename="bench.jsonl")
                    async with http.post(f"{api.base_url}/v1/files", data=form, headers=auth) as resp:
                        body = await resp.json()
                        assert resp.status == 200 and body["bytes"] == size, body
                    if purpose in file_ids:  # keep one copy per purpose
                        async with http.delete(f"{api.base_url}/v1/files/{file_ids[purpose]}", headers=auth):
                            pass
                    file_ids[purpose] = body["id"]
                return run

            async def api_download() -> None:
                got = 0
                url = f"{api.base_url}/v1/files/{file_ids['user_data']}/content"
                async with http.get(url, headers=auth) as resp:
                    assert resp.status == 200
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        got += len(chunk)
                assert got == size

            async def s3_upload() -> None:
                async with s3.multipart_writer("bench/direct") as w:
                    async for chunk in chunks(data):
                        await w.write(chunk)

            async def s3_download() -> None:
                got = 0
                async for chunk in s3.iter_object("bench/direct", chunk_size=CHUNK):
                    got += len(chunk)
                assert got == size

            paths: dict[str, Callable[[], Awaitable[None]]] = {
                "s3 upload": s3_upload,
                "api upload (user_data)": api_upload("user_data"),
                "api upload (batch)": api_upload("batch"),
                "s3 download": s3_download,
                "api download": api_download,
            }
            await s3.put_bytes("bench/warm", b"x")
            rss_start = api.peak_rss_bytes()
            # Rounds interleave the paths, so a busy moment on the (shared) machine hits a whole round
            # rather than one path; the ratios below pair each api transfer with its round's S3 one.
            for _ in range(rounds):
                for name, run in paths.items():
                    cpu_before, started = cpu_seconds(api.pid), time.perf_counter()
                    await run()
                    seconds.setdefault(name, []).append(time.perf_counter() - started)
                    api_cpu.setdefault(name, []).append(cpu_seconds(api.pid) - cpu_before)
            rss_peak = api.peak_rss_bytes()
    finally:
        api.stop()

    mib = size / MIB
    print(f"file: {mib:.0f} MiB ({size} bytes), {rounds} interleaved rounds, median of rounds (MiB/s)")
    print(f"  {'path':<26} {'median':>8} {'best':>8}   api CPU s/GiB")
    for name, times in seconds.items():
        cpu = statistics.median(api_cpu[name]) / (size / 2**30)
        print(f"  {name:<26} {mib / statistics.median(times):8.1f} {mib / min(times):8.1f}   {cpu:6.2f}")

    def ratio(api_path: str, s3_path: str) -> str:
        per_round = [s / a for a, s in zip(seconds[api_path], seconds[s3_path], strict=True)]
        return f"{statistics.median(per_round):.2f} (rounds: {', '.join(f'{r:.2f}' for r in per_round)})"

    print(f"  ratio upload   api/s3, user_data: {ratio('api upload (user_data)', 's3 upload')}")
    print(f"  ratio upload   api/s3, batch:     {ratio('api upload (batch)', 's3 upload')}")
    print(f"  ratio download api/s3:            {ratio('api download', 's3 download')}")
    print(f"  api peak RSS (VmHWM): {rss_peak / MIB:.0f} MiB ({rss_start / MIB:.0f} MiB before the transfers)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="file size in MiB (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every transfer (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="offhours-bench-files-") as tmp:
        state = Path(tmp)
        base = Settings(state_dir=state, s3_bucket="bench-files", mongodb_database="bench_files", log_json=True)
        launcher = Launcher(base, state_dir=state, ports=Ports.free(), startup_timeout=90)
        info = await launcher.up()
        try:
            settings = info.apply(base)
            async with ObjectStore(settings) as s3:
                await s3.ensure_bucket()
            await measure(settings, args.mb, args.rounds, state)
        finally:
            await launcher.down()


if __name__ == "__main__":
    asyncio.run(main())
