"""The model of a batch, read from the first request lines of its input without reading the file.

The API needs `model` at create time (the test-model limits depend on it, and the Batch object
shows it at once, as OpenAI's does); the dispatcher's full validation pass comes later. The bytes
up to the first line that names a model are fetched, in one ranged GET that stops there.

The first line alone is not enough: a first line whose body is not an object names no model, yet
the dispatcher adopts the model of a later line, so a batch of a limited model would slip past its
limits. Reading on until a line names one closes that, and a bound keeps it cheap: a file whose
model is limited must fit that model's file size limit to be valid, so reading that many bytes
finds its model if any line names one.
"""

from __future__ import annotations

import contextlib

import orjson

from schemas.jsonl import LineSplitter
from services.stores.s3 import ObjectStore

PEEK_CHUNK = 64 * 1024


async def first_line(objects: ObjectStore, key: str, *, max_bytes: int, chunk_size: int = PEEK_CHUNK) -> bytes | None:
    """The first non-blank line of the object (without its newline), or None if there is none
    within `max_bytes` (a longer line is the dispatcher's `line_too_large`, not ours to judge)."""
    buf = bytearray()
    read = 0
    chunks = objects.iter_object(key, chunk_size=chunk_size, end=max_bytes)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            read += len(chunk)
            buf += chunk
            while True:
                newline = buf.find(b"\n")
                if newline < 0:
                    break
                line = bytes(buf[:newline])
                del buf[: newline + 1]
                if line.strip():
                    return line
    # No newline before the end: the object's last line, if the whole object was read.
    return bytes(buf) if buf.strip() and read < max_bytes else None


def model_of_line(line: bytes | None) -> str | None:
    """`body.model` of a request line; None when the line does not say (the dispatcher reports why)."""
    if line is None:
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    body = obj.get("body") if isinstance(obj, dict) else None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else None


async def first_model(
    objects: ObjectStore, key: str, *, max_bytes: int, max_line_bytes: int, chunk_size: int = PEEK_CHUNK
) -> str | None:
    """`body.model` of the first line within the object's first `max_bytes` that names one, or None.

    Lines longer than `max_line_bytes` are skipped unread (the dispatcher reports them). The first
    line counts the same as any other, so a file whose first line names a model costs one small read.
    """
    splitter = LineSplitter(max_line_bytes)
    read = 0
    chunks = objects.iter_object(key, chunk_size=chunk_size, end=max_bytes)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            read += len(chunk)
            for raw in splitter.feed(chunk):
                if not raw.oversize and (model := model_of_line(raw.data)) is not None:
                    return model
    if read < max_bytes:  # the whole object was read: its last line has no newline
        for raw in splitter.finish():
            if not raw.oversize and (model := model_of_line(raw.data)) is not None:
                return model
    return None
