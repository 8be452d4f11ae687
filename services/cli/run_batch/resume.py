"""What an earlier run of the same command already wrote, so `--resume` does only the rest.

The pipeline writes each file strictly in input order and every line's `id` ends in its input
line number (`batch_req_<prefix>_<line:08d>`). So each existing output file, read front to
back, is an increasing list of done line numbers, and a three-way merge with the input —
which is streamed again anyway — tells for each input line whether it is done, in O(1)
memory. With a separate error file the two files may have reached different points when
the process died (one buffer flushed, the other not); the merge is exact all the same.

Before anything is read, each file is cut back to its last newline: a line torn by a crash
is dropped and its input line is run again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from schemas.jsonl import iter_file_lines
from schemas.line_validation import LineIssue, ValidLine
from schemas.retriable import is_retriable
from services.cli.run_batch.errors import RunBatchError
from services.inference.pipeline import PipelineStats

LINE_ID_PREFIX = "batch_req_"
# Our own output lines are held whole when written, so any size is possible; this only
# stops a foreign file with no newlines from being read into memory.
_MAX_WRITTEN_LINE = 1 << 30


def cut_torn_tail(path: Path) -> int:
    """Truncate `path` after its last newline; the number of bytes removed."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        block = 1 << 16
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start)
            i = data.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
        return size - keep


@dataclass(slots=True)
class WrittenLine:
    number: int  # the input line it answers
    custom_id: str | None
    data: bytes = b""  # the line as written, without its newline
    code: str | None = None  # the error code; None for a success
    retriable: bool = False
    input_tokens: int = 0
    output_tokens: int = 0


def count_line(stats: PipelineStats, line: WrittenLine) -> None:
    """Add one written line to a tally, as the pipeline counted it when it wrote the line."""
    stats.total += 1
    stats.last_line = max(stats.last_line, line.number)
    if line.code is None:
        stats.succeeded += 1
        stats.input_tokens += line.input_tokens
        stats.output_tokens += line.output_tokens
    else:
        stats.failed += 1
        stats.failures_by_code[line.code] = stats.failures_by_code.get(line.code, 0) + 1


class WrittenFile:
    """The lines of one existing output or error file, in order, with their tallies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repaired_bytes = cut_torn_tail(path)
        self.size = path.stat().st_size
        self.stats = PipelineStats()
        self.id_prefix: str | None = None
        self._file = open(path, "rb")  # noqa: SIM115 - closed when exhausted or by close()
        self._lines = self._read()
        self.head: WrittenLine | None = None
        self.advance()

    def _read(self) -> Iterator[WrittenLine]:
        last = 0
        for raw in iter_file_lines(self._file, _MAX_WRITTEN_LINE, end=self.size):
            line = self._parse(raw.data, raw.number)
            if line.number <= last:
                raise self._foreign(raw.number, f"it answers input line {line.number}, after line {last}")
            last = line.number
            yield line

    def _parse(self, data: bytes, where: int) -> WrittenLine:
        try:
            obj = orjson.loads(data)
            line_id = obj["id"]
            head, _, digits = line_id.rpartition("_")
            number = int(digits)
            if not line_id.startswith(LINE_ID_PREFIX) or not head:
                raise ValueError(line_id)
            error = obj["error"]
            custom_id = obj["custom_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise self._foreign(where, "it is not an output line of offhours run-batch") from None
        if self.id_prefix is None:
            self.id_prefix = line_id[len(LINE_ID_PREFIX) : len(head) + 1]
        line = WrittenLine(number, custom_id if isinstance(custom_id, str) else None, data)
        if error is None:
            body = (obj.get("response") or {}).get("body")
            usage = body.get("usage") if isinstance(body, dict) else None
            if isinstance(usage, dict):
                line.input_tokens = usage.get("prompt_tokens") or 0
                line.output_tokens = usage.get("completion_tokens") or 0
        else:
            line.code = str(error.get("code")) if isinstance(error, dict) else "unknown"
            line.retriable = is_retriable(error, obj.get("response"))
        count_line(self.stats, line)
        return line

    def _foreign(self, where: int, why: str) -> RunBatchError:
        return RunBatchError(
            f"cannot resume: line {where} of {self.path}: {why}. Was it written by a different command? "
            "Rerun without --resume to start over (the file is overwritten)."
        )

    def advance(self) -> None:
        try:
            self.head = next(self._lines, None)
        except BaseException:
            self.close()
            raise
        if self.head is None:
            self._file.close()

    def close(self) -> None:
        self._lines.close()
        self._file.close()


class DoneLines:
    """Merges the existing files with the input: `skip(item)` is True for a line already answered.

    Items must come in input order (they do: the input is streamed front to back).
    """

    def __init__(self, files: list[WrittenFile]) -> None:
        self.files = files
        self.skipped = 0

    @property
    def exhausted(self) -> bool:
        return all(f.head is None for f in self.files)

    @property
    def id_prefix(self) -> str | None:
        return next((f.id_prefix for f in self.files if f.id_prefix), None)

    def skip(self, item: ValidLine | LineIssue) -> bool:
        n = item.number
        for f in self.files:
            head = f.head
            if head is None:
                continue
            if head.number < n:
                raise self._changed(f, f"it answers input line {head.number}, which is blank or missing now")
            if head.number == n:
                if head.custom_id != item.custom_id:
                    raise self._changed(
                        f, f"it answers input line {n} with custom_id {head.custom_id!r}, "
                        f"but that line now has custom_id {item.custom_id!r}")
                f.advance()
                self.skipped += 1
                return True
        return False

    def finish(self) -> None:
        """Called at the end of the input: every written line must have met its input line."""
        for f in self.files:
            if f.head is not None:
                raise self._changed(f, f"it answers input line {f.head.number}, past the end of the input")

    def drain(self) -> None:
        """Read the rest of the files without comparing (for the tallies of an interrupted run)."""
        for f in self.files:
            while f.head is not None:
                f.advance()

    def stats(self) -> PipelineStats:
        total = PipelineStats()
        for f in self.files:
            total.add(f.stats)
        return total

    def close(self) -> None:
        for f in self.files:
            f.close()

    @staticmethod
    def _changed(f: WrittenFile, why: str) -> RunBatchError:
        return RunBatchError(
            f"cannot resume: {f.path} does not match the input ({why}). The input changed since the "
            "first run; rerun without --resume to start over."
        )
