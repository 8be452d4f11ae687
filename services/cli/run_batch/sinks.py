"""Where result lines go: a local file written through a buffer.

Output is appended as the pipeline hands it over (in input order). Whatever is written is
flushed within `flush_interval` seconds — by a timer, so that a slow model's rare results do not
sit in the buffer until the next one — and a crash loses at most that much work, which
`--resume` recomputes. A URL output is built in a local staging file first (mode 0600, in a
private folder: locations.staging_dir) and uploaded once the run is complete, by upload.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from services.cli.run_batch.errors import RunBatchError

WRITE_BUFFER = 1 << 20


class FileSink:
    """One output file; `append` continues a file an earlier run wrote (for --resume)."""

    def __init__(self, path: Path, *, append: bool, flush_interval: float = 0.5, private: bool = False) -> None:
        """`private`: mode 0600 whatever the umask (also for a file an earlier run made), and never
        through a symbolic link."""
        self.path = path
        self.flush_interval = flush_interval
        self.lines = 0  # lines written by this run
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        if private:
            flags |= os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, 0o600 if private else 0o666)
        except OSError as exc:
            raise RunBatchError(f"cannot write {path}: {exc.strerror or exc}") from exc
        try:
            if private:
                os.fchmod(fd, 0o600)
            self._file = open(fd, "ab" if append else "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        except OSError as exc:
            os.close(fd)
            raise RunBatchError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._timer: asyncio.TimerHandle | None = None
        self._error: OSError | None = None  # a failed timed flush, raised by the next write

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._failed(self._error)
        try:
            self._file.write(data)
        except OSError as exc:
            raise self._failed(exc) from exc
        self.lines += data.count(b"\n")
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self._flush)

    def _flush(self) -> None:
        self._timer = None
        try:
            self._file.flush()
        except OSError as exc:
            self._error = exc

    def _failed(self, exc: OSError) -> RunBatchError:
        return RunBatchError(
            f"writing {self.path} failed: {exc.strerror or exc}; what was written is kept — "
            "fix the problem and rerun the same command with --resume"
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._file.closed:
            return
        try:
            self._file.close()  # flushes what a failed timed flush left, or fails itself
        except OSError as exc:
            raise self._failed(exc) from exc
