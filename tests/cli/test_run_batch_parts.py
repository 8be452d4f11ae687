"""The pure parts of run-batch: torn-line repair, staging names, retry delays, progress and summary text."""

from __future__ import annotations

import io
import random
import re
import time
from pathlib import Path

import pytest

from services.cli.run_batch.http_retry import RetryPolicy, is_retryable_status
from services.cli.run_batch.locations import STAGING_PREFIX, is_url, redact, staging_dir, staging_name
from services.cli.run_batch.progress import (
    Progress,
    Snapshot,
    format_bytes,
    format_duration,
    format_rate,
    render_log,
)
from services.cli.run_batch.resume import cut_torn_tail
from services.cli.run_batch.summary import Destination, Summary
from services.inference.pipeline import PipelineStats


@pytest.mark.parametrize(("content", "kept"), [
    (b"", b""),
    (b"a\nb\n", b"a\nb\n"),
    (b"a\nb\npartial", b"a\nb\n"),
    (b"no newline at all", b""),
    (b"x" * 200_000 + b"\n" + b"y" * 150_000, b"x" * 200_000 + b"\n"),  # the newline is blocks back
])
def test_cut_torn_tail(tmp_path: Path, content: bytes, kept: bytes) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    assert cut_torn_tail(path) == len(content) - len(kept)
    assert path.read_bytes() == kept


def test_staging_name_ignores_the_query_string_and_differs_per_object() -> None:
    a1 = staging_name("https://h.example/b/out.jsonl?X-Amz-Signature=1")
    a2 = staging_name("https://H.example/b/out.jsonl?X-Amz-Signature=2")
    b = staging_name("https://h.example/b/other.jsonl")
    assert a1 == a2 != b
    assert a1.endswith("out.jsonl") and "/" not in a1


def test_staging_dir_is_new_and_private_and_resume_finds_only_our_private_one(tmp_path: Path) -> None:
    name = staging_name("https://h.example/b/out.jsonl")
    first = staging_dir(tmp_path, [name], resume=False)
    assert first.parent == tmp_path and first.name.startswith(STAGING_PREFIX)
    assert first.stat().st_mode & 0o777 == 0o700
    assert staging_dir(tmp_path, [name], resume=False) != first  # never a predictable path
    assert staging_dir(tmp_path, [name], resume=True) not in (first,)  # nothing staged in it yet
    (first / name).write_bytes(b"x\n")
    assert staging_dir(tmp_path, [name], resume=True) == first
    first.chmod(0o755)  # others could have put the file there: not resumed from
    assert staging_dir(tmp_path, [name], resume=True) != first


def test_url_detection_and_redaction() -> None:
    assert is_url("https://x/y") and is_url("HTTP://x/y") and not is_url("./https.jsonl")
    assert redact("https://user:pw@h.example/a.jsonl?sig=secret") == "https://h.example/a.jsonl?…"


def test_retry_delays_grow_with_jitter_and_honour_retry_after() -> None:
    random.seed(1)
    policy = RetryPolicy(attempts=6, backoff=1.0, max_delay=8.0)
    for retry, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(step * 0.5 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step * 0.2  # jittered, not fixed
    assert policy.delay(1, retry_after="7") >= 7
    assert policy.delay(1, retry_after="100000") <= 60
    assert policy.delay(1, retry_after="Wed, 21 Oct 2015 07:28:00 GMT") <= 1.0


def test_which_statuses_are_retried() -> None:
    assert all(is_retryable_status(s) for s in (408, 429, 500, 502, 503, 504, 599))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 409, 413))


async def _drawn_bar(total_bytes: int | None) -> str:
    stream = io.StringIO()
    progress = Progress("bar", stream, position=lambda: 50_000_000, total_bytes=total_bytes, interval=5,
                        stats=lambda: (PipelineStats(total=1_000, failed=2),
                                       PipelineStats(total=4_000, succeeded=3_990, failed=10)))
    progress.started = time.monotonic() - 4
    progress.start()
    progress.draw()
    progress.message("a message")
    await progress.stop()
    return stream.getvalue()


async def test_progress_texts() -> None:
    snap = Snapshot(lines=5_000, failed=12, new_lines=4_000, read_bytes=50_000_000, total_bytes=100_000_000,
                    elapsed=4.0)
    frames = (await _drawn_bar(100_000_000)).split("\r")
    drawn = next(frame for frame in frames if " 50%" in frame)
    assert drawn.startswith("[") and "5,000 lines · 4,988 ok · 12 failed" in drawn and "lines/s" in drawn
    assert re.search(r"00:0\d<00:0\d$", drawn.rstrip()), drawn  # elapsed since the run started < ETA
    assert "a message\n" in frames and frames[-1] == ""  # the message on a line of its own; the bar wiped at the end
    log = render_log(snap)
    assert "5,000 lines done, 12 failed" in log and "50.0 MB of 100.0 MB read (50%)" in log
    assert "1,000 lines/s · elapsed 0:00:04 · ETA 0:00:04" in log
    unknown = await _drawn_bar(None)
    assert "50.0MB read · 5,000 lines" in unknown and "%" not in unknown
    assert format_duration(3725) == "1:02:05"
    assert format_bytes(999) == "999 B" and format_bytes(1_500_000_000) == "1.5 GB"
    assert format_rate(25_000, 2.0) == "12,500" and format_rate(3, 2.0) == "1.5"


def test_summary_text() -> None:
    stats = PipelineStats(total=10, succeeded=7, failed=3, input_tokens=100, output_tokens=60,
                          failures_by_code={"invalid_json": 2, "duplicate_custom_id": 1})
    text = Summary(stats=stats, new_lines=6, resumed=4, elapsed=2.0,
                   destinations=[Destination("output", "/tmp/o.jsonl", 10)]).render()
    assert "10 total · 7 succeeded · 3 failed (invalid_json 2, duplicate_custom_id 1)" in text
    assert "4 lines were already done" in text and "100 input · 60 output" in text
    assert "3.0 lines/s" in text and "/tmp/o.jsonl (10 lines)" in text


async def test_a_lone_write_reaches_the_disk_within_the_flush_interval(tmp_path: Path) -> None:
    # A slow model writes rarely: its results must not wait in the buffer for the next one.
    import asyncio

    from services.cli.run_batch.sinks import FileSink

    path = tmp_path / "out.jsonl"
    sink = FileSink(path, append=False, flush_interval=0.05)
    await sink.write(b'{"a":1}\n')
    assert path.read_bytes() == b""  # buffered
    for _ in range(100):
        if path.read_bytes():
            break
        await asyncio.sleep(0.02)
    assert path.read_bytes() == b'{"a":1}\n'
    await sink.write(b'{"b":2}\n')
    sink.close()
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n' and sink.lines == 2
