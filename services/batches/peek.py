"""The model of a batch, read from the first request line of its input without reading the file.

The API needs `model` at create time (the test-model limits depend on it, and the Batch object
shows it at once, as OpenAI's does); the dispatcher's full validation pass comes later. Only the
bytes up to the first non-blank line's newline are fetched, in one ranged GET that stops early.
"""

from __future__ import annotations

import contextlib

import orjson

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
