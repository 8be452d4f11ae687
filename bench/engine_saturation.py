"""Does `offhours run-batch` keep a real engine as busy as calling it directly?

Chat: the same prompts (fixed max_tokens, temperature 0, so both ways generate the same
tokens) run (a) directly through the llama.cpp engine in a plain loop and (b) through
`offhours run-batch` in a subprocess. Embeddings: the same texts, one per request line, (a)
directly through the engine — one request at a time, and batched the way the pipeline
batches them — and (b) through `offhours run-batch`.

run-batch is timed end to end (interpreter start, imports, model load included) and also
with its fixed start-up cost subtracted; that cost is measured by a one-line run of the
same command. Each way reports wall time and CPU time (user + system, all threads; for
run-batch, of the subprocess): on a host shared with other work the wall-clock rate swings
with the neighbours' load, while CPU seconds per token mostly do not. The ratio of the second to the direct loop is the saturation figure (target
>= 0.95). Each way runs --repeat times, interleaved, and the best run of each is reported: on a
shared host other processes slow some runs down. This is a benchmark, not a test: it prints
numbers and asserts nothing.

    .venv/bin/python bench/engine_saturation.py [--prompts 64] [--max-tokens 32] [--texts 2000]
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

import orjson

from services.inference.engines.base import EngineRequest
from services.inference.registry import get_model

OFFHOURS = str(Path(sys.executable).with_name("offhours"))
TOPICS = ["rivers", "bread", "volcanoes", "chess", "owls", "the moon", "bicycles", "tea", "glaciers", "jazz",
          "bees", "lighthouses", "maps", "copper", "tides", "kites"]
# The unbatched loop is an order of magnitude slower: a sample of it is enough.
ONE_BY_ONE = 200
STYLES = ["Write one sentence about", "Give a fun fact about", "Describe", "Explain briefly"]


def chat_prompts(n: int) -> list[str]:
    return [f"{STYLES[i % len(STYLES)]} {TOPICS[(i // len(STYLES)) % len(TOPICS)]} (#{i})." for i in range(n)]


def texts(n: int) -> list[str]:
    return [f"Note {i}: {TOPICS[i % len(TOPICS)]} and {TOPICS[(i * 7) % len(TOPICS)]} appear in "
            f"{STYLES[i % len(STYLES)].lower()} number {i}." for i in range(n)]


def write_jsonl(path: Path, url: str, bodies: list[dict[str, Any]]) -> None:
    with open(path, "wb") as f:
        for i, body in enumerate(bodies):
            f.write(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}) + b"\n")


@dataclass
class Timing:
    wall: float  # seconds on the clock
    cpu: float  # user + system seconds of every thread of the process that did the work


class Timer:
    """Wall and CPU time of work done in this process (`children=False`) or by subprocesses."""

    def __init__(self, children: bool = False) -> None:
        self.children = children

    def _cpu(self) -> float:
        if self.children:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            return usage.ru_utime + usage.ru_stime
        return time.process_time()

    def __enter__(self) -> Timer:
        self._wall, self._cpu0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timing = Timing(time.perf_counter() - self._wall, self._cpu() - self._cpu0)


def run_batch(input_file: Path, model: str, workdir: Path) -> tuple[Timing, list[dict[str, Any]]]:
    out = workdir / f"{input_file.stem}.out.jsonl"
    with Timer(children=True) as timer:
        proc = subprocess.run([OFFHOURS, "run-batch", "-i", str(input_file), "-o", str(out), "--model", model,
                               "-q"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run-batch failed ({proc.returncode}): {proc.stderr}")
    with open(out, "rb") as f:
        lines = [orjson.loads(line) for line in f]
    return timer.timing, lines


def completion_tokens(bodies: list[dict[str, Any]]) -> int:
    return sum(b["usage"]["completion_tokens"] for b in bodies)


def best(timings: list[Timing], minus: list[Timing] | None = None) -> Timing:
    """The fastest run (least wall time; least CPU time, separately), optionally less a fixed cost."""
    wall, cpu = min(t.wall for t in timings), min(t.cpu for t in timings)
    if minus:
        wall, cpu = wall - min(t.wall for t in minus), cpu - min(t.cpu for t in minus)
    return Timing(wall, cpu)


def report(title: str, unit: str, rows: list[tuple[str, float, Timing]], reference: tuple[float, Timing]) -> None:
    ref_amount, ref = reference
    print(f"\n  {title:<44} {'amount':>7} {'wall s':>8} {unit + '/s':>9} {'ratio':>6}   "
          f"{'CPU s':>7} {unit + '/CPU s':>10} {'ratio':>6}")
    for name, amount, t in rows:
        rate, cpu_rate = amount / t.wall, amount / t.cpu
        print(f"  {name:<44} {amount:>7.0f} {t.wall:>8.2f} {rate:>9.1f} {rate / (ref_amount / ref.wall):>6.3f}   "
              f"{t.cpu:>7.2f} {cpu_rate:>10.1f} {cpu_rate / (ref_amount / ref.cpu):>6.3f}")


async def bench_chat(model: str, n: int, max_tokens: int, repeat: int, workdir: Path) -> None:
    bodies = [{"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
               "temperature": 0} for p in chat_prompts(n)]
    batch_file, one_file = workdir / "chat.jsonl", workdir / "chat-one.jsonl"
    write_jsonl(batch_file, "/v1/chat/completions", bodies)
    write_jsonl(one_file, "/v1/chat/completions", [{**bodies[0], "max_tokens": 1}])
    engine = get_model(model).create_engine()
    with Timer() as load:
        await engine.start()
    direct: list[Timing] = []
    startup: list[Timing] = []
    full: list[Timing] = []
    try:
        await engine.infer(EngineRequest("/v1/chat/completions", {**bodies[0], "max_tokens": 1}))  # warm-up
        for _ in range(repeat):
            with Timer() as timer:
                answers = [(await engine.infer(EngineRequest("/v1/chat/completions", b))).body for b in bodies]
            direct.append(timer.timing)
            startup.append(run_batch(one_file, model, workdir)[0])
            timing, lines = run_batch(batch_file, model, workdir)
            full.append(timing)
    finally:
        await engine.close()
    tokens = completion_tokens(answers)
    rb_tokens = completion_tokens([line["response"]["body"] for line in lines])
    print(f"\nchat: {n} prompts, max_tokens={max_tokens}, temperature 0, model {model} "
          f"(threads {getattr(engine, 'n_threads', '?')}, load {load.timing.wall:.2f} s, run-batch start-up "
          f"{best(startup).wall:.2f} s; best of {repeat})")
    report("completion tokens", "tok", [
        ("direct: engine.infer in a plain loop", tokens, best(direct)),
        ("run-batch, end to end", rb_tokens, best(full)),
        ("run-batch, start-up subtracted", rb_tokens, best(full, minus=startup)),
    ], (tokens, best(direct)))
    if rb_tokens != tokens:
        print(f"  note: run-batch generated {rb_tokens} tokens, the direct loop {tokens}")


async def bench_embeddings(model: str, n: int, repeat: int, workdir: Path) -> None:
    bodies = [{"model": model, "input": t} for t in texts(n)]
    batch_file, one_file = workdir / "emb.jsonl", workdir / "emb-one.jsonl"
    write_jsonl(batch_file, "/v1/embeddings", bodies)
    write_jsonl(one_file, "/v1/embeddings", bodies[:1])
    engine = get_model(model).create_engine()
    await engine.start()
    size = engine.batch_size
    single: list[Timing] = []
    batched: list[Timing] = []
    startup: list[Timing] = []
    full: list[Timing] = []
    try:
        await engine.infer(EngineRequest("/v1/embeddings", bodies[0]))  # warm-up
        for _ in range(repeat):
            with Timer() as timer:
                for b in bodies[:ONE_BY_ONE]:
                    await engine.infer(EngineRequest("/v1/embeddings", b))
            single.append(timer.timing)
            with Timer() as timer:
                for i in range(0, n, size):
                    await engine.infer_many([EngineRequest("/v1/embeddings", b) for b in bodies[i:i + size]])
            batched.append(timer.timing)
            startup.append(run_batch(one_file, model, workdir)[0])
            timing, lines = run_batch(batch_file, model, workdir)
            assert len(lines) == n
            full.append(timing)
    finally:
        await engine.close()
    print(f"\nembeddings: {n} texts, one per request line, model {model} (batch_size {size}, "
          f"run-batch start-up {best(startup).wall:.2f} s; best of {repeat})")
    report("texts", "txt", [
        ("direct: engine.infer, one request at a time", min(n, ONE_BY_ONE), best(single)),
        (f"direct: engine.infer_many, {size} requests a call", n, best(batched)),
        ("run-batch, end to end", n, best(full)),
        ("run-batch, start-up subtracted", n, best(full, minus=startup)),
    ], (n, best(batched)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat-model", default="smollm2-135m-instruct")
    parser.add_argument("--embeddings-model", default="all-minilm-l6-v2")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each way; the best is reported, "
                        "because other processes on a shared host slow some runs down")
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--skip-embeddings", action="store_true")
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          "(other processes compete for the same cores; compare ratios, not absolute rates)")
    with tempfile.TemporaryDirectory(prefix="offhours-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_chat:
            await bench_chat(args.chat_model, args.prompts, args.max_tokens, args.repeat, workdir)
        if not args.skip_embeddings:
            await bench_embeddings(args.embeddings_model, args.texts, args.repeat, workdir)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    asyncio.run(main())
