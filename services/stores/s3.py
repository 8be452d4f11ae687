"""ObjectStore: one aioboto3 S3 client bound to one bucket — the only way offhours touches file bytes.

Usage:

    async with ObjectStore(settings) as store:
        await store.put_bytes("files/file_1", b"...")
        async for chunk in store.iter_object("files/file_1"):
            ...
        async with store.multipart_writer("out/batch_1.jsonl") as w:
            await w.write(line)

Why it looks like this:
- Memory stays bounded by chunk/part size, never by object size (docs/architecture.md,
  "Invariants"): reads stream (`iter_object`, `get_range`) and writes go through a multipart
  writer that uploads each part as soon as it fills.
- botocore's default "flexible checksums" (CRC32 on every PUT, validation on every GET) break
  ranged GETs against rclone and some S3 clones; `when_required` keeps checksums only where the
  S3 API demands them. Path-style addressing, because local/MinIO endpoints have no per-bucket DNS.
- Nothing here relies on S3 metadata or Content-Type surviving (rclone forgets both on restart);
  metadata belongs in MongoDB.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from services.settings import Settings

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MIB
# S3's floor for every part but the last; smaller parts are refused at CompleteMultipartUpload.
MIN_PART_SIZE = 5 * MIB
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class ObjectNotFound(KeyError):
    """The key (or the bucket) does not exist."""


def _is_not_found(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(err.get("Code")) in _NOT_FOUND or status == 404


def client_config() -> Config:
    return Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
    )


class ObjectStore:
    """Async S3 access for one bucket. Open once per process and share it (the client is pooled)."""

    def __init__(self, settings: Settings, bucket: str | None = None) -> None:
        self.settings = settings
        self.bucket = bucket or settings.s3_bucket
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    # -- lifecycle --

    async def open(self) -> Self:
        if self._client is not None:
            return self
        stack = contextlib.AsyncExitStack()
        session = aioboto3.Session()
        self._client = await stack.enter_async_context(
            session.client(
                "s3",
                # "" means "AWS itself" (an env var cannot be unset to None in a manifest).
                endpoint_url=self.settings.s3_endpoint_url or None,
                region_name=self.settings.s3_region,
                aws_access_key_id=self.settings.s3_access_key_id,
                aws_secret_access_key=self.settings.s3_secret_access_key,
                config=client_config(),
            )
        )
        self._stack = stack
        return self

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def client(self) -> Any:
        """The raw aiobotocore client, for the rare call this class does not wrap."""
        if self._client is None:
            raise RuntimeError("ObjectStore is not open; use `async with ObjectStore(settings)` or open()")
        return self._client

    # -- bucket --

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""
        try:
            await self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
        try:
            await self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise

    # -- whole objects --

    async def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        await self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    async def get_bytes(self, key: str) -> bytes:
        """Whole object in memory — only for small objects (metadata, manifests, result parts)."""
        try:
            resp = await self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(key) from exc
            raise
        body = resp["Body"]
        try:
            return bytes(await body.read())
        finally:
            body.close()

    async def head(self, key: str) -> int | None:
        """Size in bytes, or None if the key does not exist."""
        try:
            resp = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        return int(resp["ContentLength"])

    async def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error (as in S3)."""
        await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def list_keys(self, prefix: str = "") -> list[str]:
        """All keys under `prefix`, in S3's (lexicographic) order."""
        return [key async for key in self.iter_keys(prefix)]

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []) or []:
                yield obj["Key"]

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many. Refuses an empty prefix (whole bucket)."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        count = 0
        # One by one rather than DeleteObjects: that call requires a Content-MD5/checksum header that
        # S3 clones disagree about, and prefixes here hold a handful of objects (parts of one batch).
        async for key in self.iter_keys(prefix):
            await self.delete(key)
            count += 1
        return count

    # -- streamed reads --

    async def get_range(self, key: str, start: int, end_exclusive: int) -> bytes:
        """Bytes [start, end_exclusive) of an object (clamped to its size, like HTTP ranges)."""
        if end_exclusive <= start:
            return b""
        chunks = [
            c
            async for c in self.iter_object(
                key, chunk_size=max(end_exclusive - start, 1), start=start, end=end_exclusive
            )
        ]
        return b"".join(chunks)

    async def iter_object(
        self, key: str, chunk_size: int = MIB, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) (end None = to the end) in chunks of at most `chunk_size`.

        One GET for the whole range; the body is read incrementally, so memory is one chunk.
        """
        if start < 0 or (end is not None and end <= start):
            return
        rng: dict[str, str] = {}
        if end is not None:
            rng["Range"] = f"bytes={start}-{end - 1}"
        elif start > 0:
            rng["Range"] = f"bytes={start}-"
        try:
            resp = await self.client.get_object(Bucket=self.bucket, Key=key, **rng)
        except ClientError as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(key) from exc
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # start at or past the end of the object: nothing to read
            raise
        body = resp["Body"]  # aiobotocore StreamingBody: read(n) pulls from the socket as needed
        try:
            while True:
                chunk = await body.read(chunk_size)
                if not chunk:
                    break
                yield bytes(chunk)
        finally:
            # Also runs when the caller stops iterating early: release the connection.
            body.close()

    # -- streamed writes --

    def multipart_writer(
        self, key: str, part_size: int = DEFAULT_PART_SIZE, content_type: str | None = None
    ) -> MultipartWriter:
        """`async with store.multipart_writer(key) as w: await w.write(b)` — see MultipartWriter."""
        return MultipartWriter(self, key, part_size=part_size, content_type=content_type)


class MultipartWriter:
    """Streams an object to S3 in parts of `part_size` bytes, uploading each part as soon as it fills.

    - Clean exit of the `async with` block completes the upload (the object appears atomically).
    - An exception in the block, or `await w.abort()`, aborts it: no object, no orphaned parts.
    - Objects smaller than one part are written with a single PUT on close (no multipart at all).
    Memory: at most one part buffered (plus the caller's current write).
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        part_size: int = DEFAULT_PART_SIZE,
        content_type: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum part size)")
        self.store = store
        self.key = key
        self.part_size = part_size
        self.content_type = content_type
        self.bytes_written = 0
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._done:
            return
        if exc_type is not None:
            await self.abort()
        else:
            await self.close()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise RuntimeError("write to a closed or aborted MultipartWriter")
        self._buf += data
        self.bytes_written += len(data)
        if len(self._buf) >= self.part_size:
            # S3 needs parts of at least 5 MiB but not of equal size: ship the whole buffer as
            # one part (a single copy) instead of slicing exact part_size pieces off its front.
            part = bytes(self._buf)
            self._buf = bytearray()
            await self._upload_part(part)

    async def _upload_part(self, data: bytes) -> None:
        client = self.store.client
        if self._upload_id is None:
            extra = {"ContentType": self.content_type} if self.content_type else {}
            resp = await client.create_multipart_upload(Bucket=self.store.bucket, Key=self.key, **extra)
            self._upload_id = resp["UploadId"]
        number = len(self._parts) + 1
        resp = await client.upload_part(
            Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    async def close(self) -> None:
        """Flush the last part and complete the upload (or PUT the whole small object)."""
        if self._done:
            return
        try:
            if self._upload_id is None:
                await self.store.put_bytes(self.key, bytes(self._buf), self.content_type)
            else:
                if self._buf:
                    await self._upload_part(bytes(self._buf))
                await self.store.client.complete_multipart_upload(
                    Bucket=self.store.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except BaseException:
            await self.abort()
            raise
        self._buf.clear()
        self._done = True

    async def abort(self) -> None:
        """Discard everything written; the key is left as it was before."""
        if self._done:
            return
        self._done = True
        self._buf.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                await self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=upload_id
                )
            except ClientError:
                # Best effort: a bucket lifecycle rule should reap stray uploads anyway.
                log.warning(
                    "abort_multipart_upload failed for %s (upload %s)", self.key, upload_id, exc_info=True
                )
