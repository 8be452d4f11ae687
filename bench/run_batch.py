"""Benchmark of `offhours run-batch`: throughput against the I/O floor, and peak memory.

    python bench/run_batch.py                      # 100,000 lines x 3 rounds, then the 500 MB input
    python bench/run_batch.py --skip-rss --line-bytes 4000

1. Builds a 100,000-line chat input (about --line-bytes per line) in a temporary folder.
2. Runs, alternately and --repeat times, the real `offhours run-batch` (a child process, the
   test model: no inference, so what is measured is the runner itself) and the I/O floor: a
   minimal loop that reads each line, parses it with orjson and writes a fixed response line.
   The best round of each is kept, which filters out noise from other work on the machine.
   It prints both rates and their ratio three ways: wall time of the run alone (the summary's
   own elapsed time), CPU time past start-up (steadier on a shared machine: CPU seconds of the
   process minus those of a run on an empty file), and wall time of the whole process.
3. Builds a 500 MB input and reports run-batch's peak RSS on it (VmHWM, polled from /proc).

Not a test: nothing here asserts a time. Targets: run-batch >= 50 % of the floor,
peak RSS < 200 MB on the 500 MB input. Numbers go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
OFFHOURS = str(Path(sys.executable).with_name("offhours"))

SYSTEM = "You are a careful assistant. Answer in plain English, briefly, and cite the passage you rely on."
WORDS = ["the", "model", "reads", "each", "request", "line", "and", "answers", "it", "while", "a",
         "runner", "keeps", "memory", "bounded", "by", "streaming", "input", "writing", "results", "in",
         "order", "as", "they", "complete"]


def request_line(i: int, model: str, line_bytes: int) -> bytes:
    base = {"custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": 256, "temperature": 0.2,
                     "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ""}]}}
    room = max(8, line_bytes - len(orjson.dumps(base)))
    text = []
    n = 0
    k = i
    while n < room:
        word = WORDS[k % len(WORDS)]
        text.append(word)
        n += len(word) + 1
        k = k * 7 + 3
    base["body"]["messages"][1]["content"] = " ".join(text)[:room]  # type: ignore[index]
    return orjson.dumps(base)


def build_input(path: Path, *, lines: int | None = None, size: int | None = None, model: str,
                line_bytes: int) -> tuple[int, int]:
    """Write the input; (lines, bytes)."""
    written = count = 0
    with open(path, "wb") as f:
        block: list[bytes] = []
        while (lines is None or count < lines) and (size is None or written < size):
            line = request_line(count, model, line_bytes)
            block.append(line)
            written += len(line) + 1
            count += 1
            if len(block) == 5000:
                f.write(b"\n".join(block) + b"\n")
                block = []
        if block:
            f.write(b"\n".join(block) + b"\n")
    return count, written


def io_floor(src: Path, dst: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of the minimal loop: read a line, parse it with orjson, write a fixed line."""
    fixed = orjson.dumps({
        "id": "batch_req_000000000000_00000001", "custom_id": "request-0",
        "response": {"status_code": 200, "request_id": "req_0000000000000000", "body": {
            "id": "chatcmpl-0000000000000000", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "This is a test result."},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 6, "total_tokens": 106}}},
        "error": None}) + b"\n"
    loads = orjson.loads
    start, cpu = time.perf_counter(), time.process_time()
    with open(src, "rb") as f, open(dst, "wb") as out:
        write = out.write
        for line in f:
            loads(line)
            write(fixed)
    return time.perf_counter() - start, time.process_time() - cpu


@dataclass
class Run:
    run_s: float  # the run itself, as its summary reports it (after start-up)
    wall_s: float  # the whole process
    cpu_s: float  # the whole process's user + system CPU
    rss_kib: int


def _vm_hwm_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM), 0 once it is gone.

    Read from /proc rather than ru_maxrss, which also counts the pages a child shares with this
    (large) parent between fork and exec.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_batch(src: Path, dst: Path, model: str) -> Run:
    start = time.perf_counter()
    with open(dst.with_suffix(".stderr"), "w+b") as err:
        proc = subprocess.Popen([OFFHOURS, "run-batch", "-i", str(src), "-o", str(dst), "--model", model,
                                 "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _vm_hwm_kib(proc.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"run-batch failed (exit {proc.returncode}):\n{stderr}")
    match = re.search(r"done in \S+ \(([\d.]+) s\)", stderr)
    if not match:
        raise SystemExit(f"no summary in run-batch's output:\n{stderr}")
    return Run(float(match.group(1)), wall, usage.ru_utime + usage.ru_stime, peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000,
                    help="lines of the throughput input (default 100000)")
    ap.add_argument("--line-bytes", type=int, default=1000,
                    help="about this many bytes per line (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of each; the best is kept (default 3)")
    ap.add_argument("--model", default="batch-test-model", help="model to run (default batch-test-model)")
    ap.add_argument("--rss-mb", type=int, default=500, help="size of the memory input in MB (default 500)")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 500 MB memory run")
    ap.add_argument("--tmp-dir", type=Path, default=None,
                    help="where to build the inputs (default: system temp)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="offhours-bench-", dir=args.tmp_dir) as tmp:
        tmp_path = Path(tmp)
        src, dst = tmp_path / "input.jsonl", tmp_path / "output.jsonl"
        lines, size = build_input(src, lines=args.lines, model=args.model, line_bytes=args.line_bytes)
        print(f"input: {lines:,} lines, {size / 1e6:.1f} MB ({size / lines:.0f} bytes/line), "
              f"model {args.model}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")

        empty = tmp_path / "empty.jsonl"
        empty.write_bytes(b"")
        startup = min((run_batch(empty, dst, args.model) for _ in range(3)), key=lambda r: r.cpu_s)
        floors: list[tuple[float, float]] = []
        runs: list[Run] = []
        for r in range(args.repeat):
            floors.append(io_floor(src, dst))
            runs.append(run_batch(src, dst, args.model))
            print(f"  round {r + 1}: floor {lines / floors[-1][0]:>9,.0f} lines/s · run-batch "
                  f"{lines / runs[-1].run_s:>9,.0f} lines/s (run) "
                  f"{lines / runs[-1].wall_s:>9,.0f} lines/s (process)")
        floor_rate = lines / min(w for w, _ in floors)
        floor_cpu_rate = lines / min(c for _, c in floors)
        run_rate = lines / min(r.run_s for r in runs)
        wall_rate = lines / min(r.wall_s for r in runs)
        cpu_rate = lines / (min(r.cpu_s for r in runs) - startup.cpu_s)
        print(f"I/O floor                  {floor_rate:>10,.0f} lines/s   "
              f"{floor_cpu_rate:>10,.0f} lines/CPU-s")
        print(f"run-batch, run             {run_rate:>10,.0f} lines/s   ratio {run_rate / floor_rate:.2f}")
        print(f"run-batch, CPU past start  {cpu_rate:>10,.0f} lines/CPU-s   "
              f"ratio {cpu_rate / floor_cpu_rate:.2f}")
        print(f"run-batch, whole process   {wall_rate:>10,.0f} lines/s   ratio {wall_rate / floor_rate:.2f}"
              f"   (start-up alone: {startup.wall_s:.2f} s wall, {startup.cpu_s:.2f} s CPU)")

        if not args.skip_rss:
            src.unlink()
            dst.unlink(missing_ok=True)
            big_lines, big_size = build_input(src, size=args.rss_mb * 1_000_000, model=args.model,
                                              line_bytes=args.line_bytes)
            big = run_batch(src, dst, args.model)
            print(f"memory input: {big_lines:,} lines, {big_size / 1e6:.0f} MB; run {big.run_s:.1f} s "
                  f"({big_lines / big.run_s:,.0f} lines/s)")
            print(f"run-batch peak RSS         {big.rss_kib / 1024:>10,.1f} MiB "
                  f"(start-up alone: {startup.rss_kib / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
