"""Progress on stderr: a tqdm bar on a terminal, a log line every few seconds otherwise.

Drawn by a timer task rather than per written slot, so a slow model still shows signs of
life and a fast one does not spend its time redrawing. The bar measures the bytes of input
read, the one total known before the end; lines, their rate and the failures are its text.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from services.inference.pipeline import PipelineStats

BAR_REFRESH = 0.2
# tqdm's own counter and rate are of bytes; `{desc}` carries the lines (bar_text).
BAR_FORMAT = "[{bar}] {percentage:3.0f}% · {desc} · {elapsed}<{remaining}"
BAR_FORMAT_NO_TOTAL = "{n_fmt}B read · {desc} · {elapsed}"


@dataclass(slots=True)
class Snapshot:
    lines: int  # lines answered (this run and, on --resume, earlier runs)
    failed: int
    new_lines: int  # lines answered by this run: the rate is of these
    read_bytes: int
    total_bytes: int | None
    elapsed: float


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_bytes(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    units = ("KB", "MB", "GB")
    i = 0
    n /= 1000
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.1f} {units[i]}"


def format_rate(lines: int, seconds: float) -> str:
    """Lines per second, with a decimal where a slow model makes the whole number meaningless."""
    rate = lines / seconds if seconds > 0 else 0.0
    return f"{rate:,.1f}" if rate < 10 else f"{rate:,.0f}"


def bar_text(s: Snapshot) -> str:
    return (f"{s.lines:,} lines · {s.lines - s.failed:,} ok · {s.failed:,} failed · "
            f"{format_rate(s.new_lines, s.elapsed)} lines/s")


def render_log(s: Snapshot) -> str:
    fraction = min(1.0, s.read_bytes / s.total_bytes) if s.total_bytes else None
    read = format_bytes(s.read_bytes) + (f" of {format_bytes(s.total_bytes)}" if s.total_bytes else "")
    pct = f" ({fraction * 100:.0f}%)" if fraction is not None else ""
    eta = ""
    if fraction and fraction < 1.0 and s.elapsed >= 1:
        eta = f" · ETA {format_duration(s.elapsed * (1 - fraction) / fraction)}"
    return (
        f"progress: {s.lines:,} lines done, {s.failed:,} failed · {read} read{pct} · "
        f"{format_rate(s.new_lines, s.elapsed)} lines/s · elapsed {format_duration(s.elapsed)}{eta}"
    )


class Progress:
    """`mode`: "bar", "log" or "off"."""

    def __init__(
        self,
        mode: str,
        stream: TextIO,
        *,
        stats: Callable[[], tuple[PipelineStats, PipelineStats]],
        position: Callable[[], int],
        total_bytes: int | None,
        interval: float,
    ) -> None:
        self.mode = mode
        self.stream = stream
        self._stats = stats  # (earlier runs, this run)
        self._position = position
        self.total_bytes = total_bytes
        self.interval = BAR_REFRESH if mode == "bar" else interval
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._bar: tqdm | None = None

    def snapshot(self) -> Snapshot:
        before, now = self._stats()
        return Snapshot(
            lines=before.total + now.total,
            failed=before.failed + now.failed,
            new_lines=now.total,
            read_bytes=self._position(),
            total_bytes=self.total_bytes,
            elapsed=time.monotonic() - self.started,
        )

    def start(self) -> None:
        if self.mode == "off":
            return
        if self.mode == "bar":
            self._bar = tqdm(
                total=self.total_bytes or None, desc=bar_text(self.snapshot()), file=self.stream,
                bar_format=BAR_FORMAT if self.total_bytes else BAR_FORMAT_NO_TOTAL, ascii=" =",
                ncols=_columns(), nrows=20, unit="B", unit_scale=True, unit_divisor=1000, leave=False,
            )
            self._bar.start_t -= time.monotonic() - self.started  # elapsed counts from the run's start
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.draw()

    def draw(self) -> None:
        s = self.snapshot()
        if self._bar is not None:
            self._bar.n = s.read_bytes
            self._bar.ncols = _columns()  # follows a resize
            self._bar.set_description_str(bar_text(s), refresh=False)
            self._bar.refresh()
        elif self.mode == "log":
            self.stream.write(f"{time.strftime('%H:%M:%S')} {render_log(s)}\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own, without tearing the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)  # clears the bar, writes, draws it again
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # unlike `await task`, does not raise its CancelledError
            self._task = None
        if self._bar is not None:
            self._bar.close()  # leave=False: the bar's line is wiped for the summary
            self._bar = None
        self.stream.flush()


def _columns() -> int:
    # Not tqdm's dynamic_ncols: it reads a pseudo-terminal of size 0x0 (`script`, CI, tests) as
    # -1 columns and then draws nothing; shutil falls back to 100. Less one: no wrap at the edge.
    return shutil.get_terminal_size((100, 20)).columns - 1
