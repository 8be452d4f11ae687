"""The first-line peek against real S3: it reads only up to the first request line."""

from __future__ import annotations

from services.batches.peek import first_line
from services.settings import Settings
from services.stores.s3 import ObjectStore


async def test_first_line(settings: Settings) -> None:
    async with ObjectStore(settings) as objects:
        long_line = b'{"body":{"model":"m"},"pad":"' + b"x" * 5000 + b'"}'
        await objects.put_bytes("a", b"\n \r\n" + long_line + b"\nsecond\n")
        # Chunks smaller than the line: the line is assembled across several reads.
        assert await first_line(objects, "a", max_bytes=10_000, chunk_size=1000) == long_line
        await objects.put_bytes("b", b"only line, no newline")
        assert await first_line(objects, "b", max_bytes=1000) == b"only line, no newline"
        await objects.put_bytes("c", b"\n\n   \n")
        assert await first_line(objects, "c", max_bytes=1000) is None
        # A first line longer than the bound is not returned (the dispatcher reports line_too_large).
        assert await first_line(objects, "a", max_bytes=1000, chunk_size=100) is None
        await objects.put_bytes("d", b"")
        assert await first_line(objects, "d", max_bytes=1000) is None
