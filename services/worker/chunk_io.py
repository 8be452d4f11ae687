"""Reading a chunk's lines from S3 and writing a chunk attempt's result parts.

A chunk is a byte range of the stored input file; its lines are framed exactly as the dispatcher's
validation pass framed them (same start offset, same first line number), so line numbers in the
error file match the input file. Reads stream; memory is one read buffer plus one line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

from schemas.jsonl import LineSplitter, RawLine
from schemas.line_validation import LineIssue, LineValidator, ValidLine
from schemas.work import WorkChunk
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


async def read_chunk_items(store: ObjectStore, chunk: WorkChunk, max_line_bytes: int) -> list[ValidLine | LineIssue]:
    """The chunk's request lines, validated by a fresh LineValidator (blank lines skipped).

    One ranged GET, then framing and validation in C-level loops: a chunk is at most
    `chunk_max_bytes` plus one line, so holding it is what "memory bounded by chunk size" means, and
    a synchronous item list lets the Pipeline fill its slots without per-line awaits.
    Fresh validator per chunk: the dispatcher already proved custom_ids unique across the file, and a
    chunk must validate the same way whichever worker (or attempt) runs it.
    """
    data = await store.get_range(chunk.input_key, chunk.start, chunk.end)
    if len(data) != chunk.end - chunk.start:
        raise RuntimeError(f"chunk {chunk.batch_id}:{chunk.chunk}: read {len(data)} bytes of "
                           f"{chunk.end - chunk.start} from {chunk.input_key}")
    splitter = LineSplitter(max_line_bytes, start=chunk.start, first_number=chunk.first_line)
    raws = splitter.feed(data)
    raws += splitter.finish()
    del data
    validator = LineValidator(endpoint=chunk.endpoint, model=chunk.model, max_line_bytes=max_line_bytes)
    return list(filter(None, map(validator.validate, raws)))


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
