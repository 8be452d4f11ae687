"""How a JSONL batch file is framed into lines, with memory bounded by the line limit.

Both readers report each physical line with its 1-based number and byte range in the file,
because everything downstream (error locations, byte-range work chunks, resume) needs them.
A line longer than the limit is never held: its bytes are skipped up to the next newline and
it is reported `oversize`. CRLF endings and a UTF-8 BOM at the start of the file are accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 6 * 1024 * 1024


@dataclass(slots=True)
class RawLine:
    number: int
    start: int  # offset of the line's first byte in the file
    end: int  # offset just past its terminator (or EOF)
    data: bytes  # content without terminator or BOM; b"" when oversize
    oversize: bool = False


def _trim(data: bytes, start: int) -> bytes:
    if data.endswith(b"\r"):
        data = data[:-1]
    if start == 0 and data.startswith(BOM):
        data = data[3:]
    return data


class LineSplitter:
    """Incremental splitter for byte streams (HTTP bodies, S3 objects): feed chunks, get lines."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, *, start: int = 0, first_number: int = 1):
        self.max_line_bytes = max_line_bytes
        self._offset = start  # file offset of the pending line's first byte
        self._number = first_number
        self._parts: list[bytes] = []
        self._pending = 0  # bytes of the pending line seen so far (kept or discarded)
        self._discarding = False

    def _append(self, part: bytes) -> None:
        if not part:
            return
        self._pending += len(part)
        if self._discarding:
            return
        # +1 leaves room for a CR that _trim removes, so a CRLF line of exactly the limit passes;
        # +3 more on a file's first line for a BOM, which _trim removes too.
        if self._pending > self.max_line_bytes + (4 if self._offset == 0 else 1):
            self._discarding = True
            self._parts.clear()
        else:
            self._parts.append(part)

    def _emit(self, terminated: bool) -> RawLine:
        length = self._pending + (1 if terminated else 0)
        start = self._offset
        if self._discarding:
            line = RawLine(self._number, start, start + length, b"", True)
        else:
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            data = _trim(data, start)
            if len(data) > self.max_line_bytes:
                line = RawLine(self._number, start, start + length, b"", True)
            else:
                line = RawLine(self._number, start, start + length, data)
        self._offset = start + length
        self._number += 1
        self._parts = []
        self._pending = 0
        self._discarding = False
        return line

    def feed(self, chunk: bytes) -> list[RawLine]:
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            self._append(chunk)
            return []
        self._append(parts[0])
        out = [self._emit(True)]
        if len(parts) > 2:
            # Lines wholly inside this chunk: the hot path of every file read, so inlined.
            # The first line of a file (the only one a BOM can start) always goes through _emit.
            number, offset, limit = self._number, self._offset, self.max_line_bytes
            append = out.append
            for data in parts[1:-1]:
                end = offset + len(data) + 1
                if data and data[-1] == 13:  # CR of a CRLF ending
                    data = data[:-1]
                if len(data) > limit:
                    append(RawLine(number, offset, end, b"", True))
                else:
                    append(RawLine(number, offset, end, data))
                offset = end
                number += 1
            self._number, self._offset = number, offset
        self._append(parts[-1])
        return out

    def finish(self) -> list[RawLine]:
        """The unterminated last line, if any."""
        if self._pending or self._parts:
            return [self._emit(False)]
        return []


def iter_file_lines(
    f: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, *, start: int = 0, end: int | None = None,
    first_number: int = 1, block_size: int = 1 << 20,
) -> Iterator[RawLine]:
    """Lines of a seekable binary file from `start` to `end` (exclusive).

    `start` must be a line boundary. `end`, when given, is also a line boundary. The file is
    read in blocks through the same LineSplitter the stream readers use (a block split in C is
    about three times faster than a readline per line), so both frame lines identically.
    """
    if start or f.seekable():  # a pipe (stdin, process substitution) is read from where it is
        f.seek(start)
    splitter = LineSplitter(max_line_bytes, start=start, first_number=first_number)
    remaining = -1 if end is None else end - start
    read = f.read
    while remaining:
        chunk = read(block_size if remaining < 0 else min(block_size, remaining))
        if not chunk:
            break
        if remaining > 0:
            remaining -= len(chunk)
        yield from splitter.feed(chunk)
    yield from splitter.finish()
