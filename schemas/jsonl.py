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
        # +1 leaves room for a CR that _trim removes, so a CRLF line of exactly the limit passes.
        if self._pending > self.max_line_bytes + 1:
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
        out: list[RawLine] = []
        for part in parts[:-1]:
            self._append(part)
            out.append(self._emit(True))
        self._append(parts[-1])
        return out

    def finish(self) -> list[RawLine]:
        """The unterminated last line, if any."""
        if self._pending or self._parts:
            return [self._emit(False)]
        return []


def iter_file_lines(
    f: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, *, start: int = 0, end: int | None = None,
    first_number: int = 1,
) -> Iterator[RawLine]:
    """Lines of a seekable binary file from `start` to `end` (exclusive), via C-level readline.

    `start` must be a line boundary. `end`, when given, is also a line boundary.
    """
    f.seek(start)
    offset = start
    number = first_number
    limit = max_line_bytes + 2  # content + CR + LF
    readline = f.readline
    while end is None or offset < end:
        raw = readline(limit)
        if not raw:
            return
        length = len(raw)
        if raw[-1] != 10 and length == limit:
            # Longer than the limit: skip the rest of it without keeping it.
            while True:
                more = readline(1 << 20)
                length += len(more)
                if not more or more[-1] == 10:
                    break
            yield RawLine(number, offset, offset + length, b"", True)
        else:
            data = raw[:-1] if raw[-1] == 10 else raw
            data = _trim(data, offset)
            if len(data) > max_line_bytes:
                yield RawLine(number, offset, offset + length, b"", True)
            else:
                yield RawLine(number, offset, offset + length, data)
        offset += length
        number += 1
