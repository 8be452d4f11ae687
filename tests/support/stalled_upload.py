"""A client that starts a `POST /v1/files` upload over a raw socket and then stops sending.

aiohttp's client always finishes a body it has started; a real stalled client (a dead laptop, a
hostile one) does not, and only a raw socket can play it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

BOUNDARY = "stalledboundary0123456789"


@dataclass
class StalledUpload:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def start(cls, base_url: str, key: str, *, sent_bytes: int = 1000, declared_bytes: int = 10_000_000,
                    purpose: str = "batch") -> StalledUpload:
        """Send the headers (announcing `declared_bytes`), the purpose field and `sent_bytes` of the file."""
        parts = urlsplit(base_url)
        assert parts.hostname is not None and parts.port is not None
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        body = head + (line * (sent_bytes // len(line) + 1))[:sent_bytes]
        request = (
            f"POST /v1/files HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Authorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(head) + declared_bytes}\r\n\r\n"
        ).encode()
        writer.write(request + body)
        await writer.drain()
        return cls(reader, writer)

    async def status(self) -> int:
        """The status of the answer (waits for it; the client sends nothing more meanwhile)."""
        status_line = await self.reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        return int(status_line.split()[1])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
