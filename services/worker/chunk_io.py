"""Reading a chunk's request lines from S3.

A chunk is a byte range of the stored input file; its lines are framed exactly as the dispatcher's
validation pass framed them (same start offset, same first line number), so line numbers in the
error file match the input file.
"""

from __future__ import annotations

from schemas.jsonl import LineSplitter
from schemas.line_validation import LineIssue, LineValidator, ValidLine
from schemas.work import WorkChunk
from services.stores.s3 import ObjectStore


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
