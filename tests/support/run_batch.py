"""Helpers of the run-batch tests: request lines, input files, the real command, result checks."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from schemas.batch_lines import BatchOutputLine
from services.cli.run_batch.runner import RunBatchOptions, run_batch

OFFHOURS = str(Path(sys.executable).with_name("offhours"))
REPO = Path(__file__).resolve().parents[2]


def chat_line(i: int, *, model: str = "batch-test-model", content: str | None = None,
              url: str = "/v1/chat/completions") -> dict[str, Any]:
    return {"custom_id": f"request-{i}", "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": content or f"Say hello {i}"}]}}


def write_lines(path: Path, lines: list[Any]) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n")
    return path


def write_many(path: Path, n: int, *, model: str = "batch-test-model") -> Path:
    """n chat lines, written in blocks (fast enough for a 200k-line file)."""
    with open(path, "wb") as f:
        block: list[bytes] = []
        for i in range(n):
            block.append(orjson.dumps(chat_line(i, model=model)))
            if len(block) == 10_000:
                f.write(b"\n".join(block) + b"\n")
                block = []
        if block:
            f.write(b"\n".join(block) + b"\n")
    return path


def read_results(*paths: Path) -> list[BatchOutputLine]:
    """Every line of the given result files, each checked against the output line model."""
    return [BatchOutputLine.model_validate(obj) for obj in read_result_objects(*paths, validate_every=0)]


def read_result_objects(*paths: Path, validate_every: int = 250) -> list[dict[str, Any]]:
    """Every line as a dict: each must be a JSON object of exactly the output line's keys, and
    every `validate_every`-th (and every error line) is also checked against the full model.
    For files of 100k+ lines, where validating each line with pydantic would dominate a test.
    """
    out = []
    for p in paths:
        if not p.exists():
            continue
        data = p.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{p} does not end with a newline"
        for i, line in enumerate(data.splitlines()):
            obj = orjson.loads(line)
            assert isinstance(obj, dict) and obj.keys() == OUTPUT_KEYS, line
            if not validate_every or i % validate_every == 0 or obj["error"] is not None:
                BatchOutputLine.model_validate(obj)
            out.append(obj)
    return out


OUTPUT_KEYS = {"id", "custom_id", "response", "error"}


def custom_id_counts(*paths: Path) -> Counter[str | None]:
    return Counter(r["custom_id"] for r in read_result_objects(*paths))


def line_number(obj: dict[str, Any]) -> int:
    """The input line a result answers: its id ends in the line number."""
    return int(obj["id"].rpartition("_")[2])


def cli(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The real `offhours run-batch` in a child process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([OFFHOURS, "run-batch", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env, check=False, **kw)


async def acli(*args: str, limit: float = 120) -> tuple[int, str]:
    """The real command in a child process, while this test's event loop keeps serving HTTP."""
    proc = await asyncio.create_subprocess_exec(
        OFFHOURS, "run-batch", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def run_in_process(**kw: Any) -> tuple[int, str]:
    """The runner itself, on this event loop: (exit status, what it wrote to stderr)."""
    kw.setdefault("model", "batch-test-model")
    kw.setdefault("progress", False)
    kw.setdefault("retry_backoff", 0.01)
    for key in ("input", "output", "error_file"):
        if isinstance(kw.get(key), Path):
            kw[key] = str(kw[key])
    err = io.StringIO()
    rc = await run_batch(RunBatchOptions(**kw), err)
    return rc, err.getvalue()
