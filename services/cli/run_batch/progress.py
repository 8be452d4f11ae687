"""Progress on stderr: a one-line bar on a terminal, a log line every few seconds otherwise.

Drawn by a timer task rather than per written slot, so a slow model still shows signs of
life and a fast one does not spend its time redrawing.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from services.inference.pipeline import PipelineStats

BAR_REFRESH = 0.2


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


def _fraction(s: Snapshot) -> float | None:
    if not s.total_bytes:
        return None
    return min(1.0, s.read_bytes / s.total_bytes)


def _eta(s: Snapshot, fraction: float | None) -> str:
    if not fraction or fraction >= 1.0 or s.elapsed < 1:
        return ""
    return f" · ETA {format_duration(s.elapsed * (1 - fraction) / fraction)}"


def render_bar(s: Snapshot, width: int) -> str:
    fraction = _fraction(s)
    text = f" {s.lines:,} lines · {format_rate(s.new_lines, s.elapsed)}/s"
    if s.failed:
        text += f" · {s.failed:,} failed"
    text += _eta(s, fraction)
    if fraction is None:
        return f"{format_bytes(s.read_bytes)} read ·" + text
    bar_width = max(10, min(40, width - len(text) - 8))
    filled = int(bar_width * fraction)
    bar = "=" * filled + (">" if filled < bar_width else "") + " " * (bar_width - filled - 1)
    return f"[{bar[:bar_width]}] {fraction * 100:3.0f}%" + text


def render_log(s: Snapshot) -> str:
    fraction = _fraction(s)
    read = format_bytes(s.read_bytes) + (f" of {format_bytes(s.total_bytes)}" if s.total_bytes else "")
    pct = f" ({fraction * 100:.0f}%)" if fraction is not None else ""
    return (
        f"progress: {s.lines:,} lines done, {s.failed:,} failed · {read} read{pct} · "
        f"{format_rate(s.new_lines, s.elapsed)} lines/s · "
        f"elapsed {format_duration(s.elapsed)}{_eta(s, fraction)}"
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
        self._drawn = False

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
        if self.mode != "off":
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.draw()

    def draw(self) -> None:
        s = self.snapshot()
        if self.mode == "bar":
            width = shutil.get_terminal_size((100, 20)).columns
            line = render_bar(s, width)[: width - 1]
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(f"{time.strftime('%H:%M:%S')} {render_log(s)}\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own, without tearing the bar."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # unlike `await task`, does not raise its CancelledError
            self._task = None
        self.clear()
        self.stream.flush()
