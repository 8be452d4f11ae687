"""A local input file (or standard input), read in blocks.

Lines are framed by schemas.jsonl, so line numbers and byte offsets agree with the Files API
and the dispatcher, and no more than a block plus one line is held. URL inputs are in
http_source.py (kept apart so a local run never imports aiohttp, a third of start-up).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from schemas.jsonl import RawLine, iter_file_lines
from services.cli.run_batch.errors import RunBatchError

READ_BLOCK = 1 << 20


class LocalInput:
    """A local file, or standard input for `-` (a pipe is read once, front to back)."""

    def __init__(self, location: str, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.size: int | None = None
        if location == "-":
            self.description = "<stdin>"
            self._file: BinaryIO = sys.stdin.buffer
            return
        self.description = location
        path = Path(location)
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
            st = os.fstat(self._file.fileno())
        except OSError as exc:
            raise RunBatchError(f"cannot read input file {location}: {exc.strerror or exc}") from exc
        if stat.S_ISREG(st.st_mode):
            self.size = st.st_size

    def lines(self) -> Iterator[RawLine]:
        try:
            yield from iter_file_lines(self._file, self.max_line_bytes, block_size=READ_BLOCK)
        except OSError as exc:
            raise RunBatchError(f"reading input {self.description} failed: {exc.strerror or exc}") from exc

    def position(self) -> int:
        """Bytes read so far (for progress); 0 where a pipe cannot tell."""
        try:
            return self._file.tell()
        except OSError:
            return 0

    def close(self) -> None:
        if self._file is not sys.stdin.buffer:
            self._file.close()
