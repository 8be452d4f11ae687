"""The S3 objects of a batch's chunks: reading an input byte range line by line, writing result parts.

The worker writes each chunk attempt's output and error parts; the dispatcher's finalize reads
input ranges again (for the lines of chunks that never ran) and concatenates the parts. Reads
stream; memory is one read buffer plus one line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

from schemas.jsonl import LineSplitter, RawLine
from services.stores.s3 import MultipartWriter, ObjectStore

READ_SIZE = 1024 * 1024


async def iter_raw_lines(
    store: ObjectStore, key: str, start: int, end: int, first_line: int, max_line_bytes: int
) -> AsyncIterator[RawLine]:
    splitter = LineSplitter(max_line_bytes, start=start, first_number=first_line)
    async for data in store.iter_object(key, chunk_size=READ_SIZE, start=start, end=end):
        for raw in splitter.feed(data):
            yield raw
    for raw in splitter.finish():
        yield raw


class PartWriter:
    """A Pipeline sink that creates its S3 object only if something is written to it.

    `key` is None after close when nothing was written, so results say "no error part" instead of
    pointing at empty objects. An exception inside `async with` aborts the upload (nothing appears).
    """

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store = store
        self._key = key
        self._writer: MultipartWriter | None = None
        self.bytes_written = 0

    @property
    def key(self) -> str | None:
        return self._key if self._writer is not None else None

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self._writer is None:
            self._writer = self.store.multipart_writer(self._key, content_type="application/jsonl")
        await self._writer.write(data)
        self.bytes_written += len(data)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()

    async def abort(self) -> None:
        if self._writer is not None:
            await self._writer.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()
