"""`POST /v1/files`: the multipart body is read part by part and the file part streamed to S3.

Memory stays at one S3 part (8 MiB) plus one read chunk whatever the file size. While the
bytes stream by they are counted (the size limit is enforced before the limit is passed, and
the S3 multipart upload is aborted) and, for `purpose=batch`, checked to be JSONL.

The form's fields may come in any order. The openai SDK sends `purpose` before `file`, so the
usual case knows the purpose while streaming; when the file comes first, the JSONL check runs
anyway (it stops at the first problem) and its verdict counts only if the purpose is `batch`.
The S3 upload is completed only after the whole form has been read and found valid.

Sharing one service among projects: every read of the body has a deadline
(`upload_read_timeout_seconds`), so a client that stops sending is answered 408 and its S3 part
buffer is dropped at once, instead of being held for as long as the connection stays open; and a
project receives at most `project_max_concurrent_uploads` bodies at once (counted per API process:
several processes behind a router each allow that many).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ntpath
import posixpath
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from schemas.api_params import FileUploadFields
from schemas.text import cut, quote
from services.files.jsonl_shape import JsonlShapeCheck, ShapeError
from services.http.errors import APIError, invalid_request, too_large
from services.http.params import parse_fields
from services.settings import Settings
from services.state.files import FileRecord, FileStore, PendingUpload, new_file_id
from services.stores.s3 import MultipartWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_CHUNK = 1024 * 1024
FIELD_LIMIT = 1024  # bytes of a small form field
MAX_FILENAME = 255
FILE_FIELD = "file"
SMALL_FIELDS = frozenset(FileUploadFields.model_json_schema(by_alias=True)["properties"])
# The form around the file (boundaries, part headers, small fields) is well under this.
FORM_OVERHEAD = 64 * 1024
_PLAIN_ENCODINGS = frozenset({"", "binary", "7bit", "8bit"})


def _human(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def _clean_filename(raw: str | None) -> str:
    # Browsers on Windows may send a full path; keep the last component only.
    name = ntpath.basename(posixpath.basename(raw or "")).strip() or FILE_FIELD
    if len(name) > MAX_FILENAME:
        raise invalid_request(f"The filename is longer than {MAX_FILENAME} characters.", param=FILE_FIELD)
    return name


class UploadSlots:
    """Uploads being received per project, in this process (see the module doc)."""

    def __init__(self) -> None:
        self._active: Counter[str] = Counter()

    def active(self, project: str) -> int:
        return self._active[project]

    @contextlib.contextmanager
    def hold(self, project: str, limit: int) -> Iterator[None]:
        """One slot of `project` for the duration, or a 429 when its `limit` slots are all taken."""
        if self._active[project] >= limit:
            raise APIError(
                429,
                f"At most {limit} uploads per project may be received at once (setting "
                "project_max_concurrent_uploads); wait for one to finish.",
                code="too_many_concurrent_uploads",
            )
        self._active[project] += 1
        try:
            yield
        finally:
            self._active[project] -= 1
            if self._active[project] <= 0:
                del self._active[project]


def _stalled(timeout_s: float) -> APIError:
    return APIError(
        408,
        f"The upload sent nothing for {timeout_s:g} seconds (setting upload_read_timeout_seconds) and was "
        "abandoned; please retry.",
        code="upload_timeout",
    )


def _shape_error(err: ShapeError) -> APIError:
    return invalid_request(f"Invalid batch file: {err.message}", param=FILE_FIELD, code=err.code)


@dataclass
class _Streamed:
    pending: PendingUpload
    writer: MultipartWriter
    size: int = 0
    shape: JsonlShapeCheck | None = None
    completed: bool = False


@dataclass
class UploadForm:
    """One upload in progress: the fields read so far and the file being streamed."""

    store: FileStore
    settings: Settings
    project: str
    fields: dict[str, str] = field(default_factory=dict)
    streamed: _Streamed | None = None

    @property
    def purpose(self) -> str | None:
        return self.fields.get("purpose")

    async def _within_deadline(self, read: Awaitable[T]) -> T:
        """One read of the body, which must bring something within upload_read_timeout_seconds."""
        timeout_s = self.settings.upload_read_timeout_seconds
        try:
            async with asyncio.timeout(timeout_s):
                return await read
        except TimeoutError:
            raise _stalled(timeout_s) from None

    async def read(self, reader: MultipartReader) -> FileRecord:
        try:
            while (part := await self._within_deadline(reader.next())) is not None:
                if not isinstance(part, BodyPartReader):
                    raise invalid_request("Nested multipart bodies are not supported.", code="invalid_multipart")
                if part.name == FILE_FIELD:
                    await self._stream_file(part)
                elif part.name in SMALL_FIELDS:
                    await self._read_field(part)
                else:
                    name = part.name
                    raise invalid_request(
                        f"Unrecognized request argument supplied: {quote(name)}.",
                        param=None if name is None else cut(name), code="unknown_parameter",
                    )
            return await self._finish()
        except (ValueError, HttpProcessingError) as exc:
            # aiohttp's multipart reader raises these for a malformed or truncated body.
            await self._discard()
            raise invalid_request(f"The multipart body is malformed: {cut(str(exc))}",
                                  code="invalid_multipart") from None
        except BaseException:
            await self._discard()
            raise

    async def _read_field(self, part: BodyPartReader) -> None:
        assert part.name is not None
        if part.name in self.fields:
            raise invalid_request(f"The field {part.name!r} is given more than once.", param=part.name)
        data = bytearray()
        while chunk := await self._within_deadline(part.read_chunk(FIELD_LIMIT + 1)):
            data += chunk
            if len(data) > FIELD_LIMIT:
                raise invalid_request(f"The field {part.name!r} is too long.", param=part.name)
        try:
            value = data.decode().strip()
        except UnicodeDecodeError:
            raise invalid_request(f"The field {part.name!r} is not valid UTF-8.", param=part.name) from None
        self.fields[part.name] = value
        if part.name == "purpose":
            # Refuse an unknown purpose before any file bytes are read.
            parse_fields(FileUploadFields, {"purpose": value})

    async def _stream_file(self, part: BodyPartReader) -> None:
        if self.streamed is not None:
            raise invalid_request("Only one file may be uploaded per request.", param=FILE_FIELD)
        encoding = part.headers.get("Content-Transfer-Encoding", "").lower()
        if encoding not in _PLAIN_ENCODINGS:
            raise invalid_request(
                f"Content-Transfer-Encoding {quote(encoding)} is not supported; send the file as binary.",
                param=FILE_FIELD,
            )
        filename = _clean_filename(part.filename)
        pending = await self.store.begin_upload(self.project, new_file_id(), filename)
        streamed = _Streamed(pending, self.store.objects.multipart_writer(pending.key))
        self.streamed = streamed
        if self.purpose in (None, "batch"):
            streamed.shape = JsonlShapeCheck(
                max_line_bytes=self.settings.max_line_bytes, max_lines=self.settings.max_requests_per_batch
            )
        limit = self.settings.max_file_bytes
        while chunk := await self._within_deadline(part.read_chunk(READ_CHUNK)):
            streamed.size += len(chunk)
            if streamed.size > limit:
                raise too_large(
                    f"The file is larger than the {_human(limit)} limit.", param=FILE_FIELD, code="file_too_large"
                )
            # With the purpose still unknown the check only records its verdict (see the module doc).
            if streamed.shape is not None and (err := streamed.shape.feed(chunk)) and self.purpose == "batch":
                raise _shape_error(err)
            await streamed.writer.write(chunk)

    async def _finish(self) -> FileRecord:
        upload = parse_fields(FileUploadFields, self.fields, default_param="expires_after")
        streamed = self.streamed
        if streamed is None:
            raise invalid_request("Missing required parameter: 'file'.", param=FILE_FIELD,
                                  code="missing_required_parameter")
        if upload.purpose == "batch":
            assert streamed.shape is not None  # purpose is batch or was unknown while streaming
            if (err := streamed.shape.finish()) is not None:
                raise _shape_error(err)
        await streamed.writer.close()  # completes the S3 object
        streamed.completed = True
        record = await self.store.finish_upload(
            streamed.pending, purpose=upload.purpose, size=streamed.size,
            expires_at=self._expires_at(upload, streamed.pending.created_at),
            lines=streamed.shape.lines if upload.purpose == "batch" and streamed.shape is not None else None,
        )
        if record is None:
            raise APIError(500, "The upload took too long and was discarded; please retry.", type="server_error")
        return record

    def _expires_at(self, upload: FileUploadFields, created_at: int) -> int | None:
        if upload.expires_after_seconds is not None:
            return created_at + upload.expires_after_seconds
        default = self.settings.files_batch_default_expires_seconds
        if upload.purpose == "batch" and default > 0:
            return created_at + default
        return None

    async def _discard(self) -> None:
        """Undo a failed upload: abort (or delete) the S3 object and forget the document."""
        streamed = self.streamed
        if streamed is None:
            return
        try:
            if streamed.completed:
                await self.store.objects.delete(streamed.pending.key)
            else:
                await streamed.writer.abort()
            await self.store.discard_upload(streamed.pending.file_id)
        except Exception:
            # The sweeper reclaims what is left (the document stays `uploading`).
            log.warning("could not clean up upload %s", streamed.pending.file_id, exc_info=True)


def _content_length_check(request: web.Request, limit: int) -> None:
    length = request.content_length
    if length is not None and length > limit + FORM_OVERHEAD:
        raise too_large(f"The file is larger than the {_human(limit)} limit.", param=FILE_FIELD, code="file_too_large")


async def receive_upload(request: web.Request, store: FileStore, settings: Settings, project: str) -> FileRecord:
    """Read the multipart form of `request` and store its file; any failure leaves nothing behind."""
    if request.content_type != "multipart/form-data":
        raise invalid_request(
            f"Expected a multipart/form-data body, got {quote(request.content_type or 'none')}.",
            code="invalid_content_type",
        )
    _content_length_check(request, settings.max_file_bytes)
    try:
        reader = await request.multipart()
    except ValueError as exc:  # no or a bad boundary
        raise invalid_request(f"The multipart body is malformed: {cut(str(exc))}", code="invalid_multipart") from None
    started = time.perf_counter()
    record = await UploadForm(store, settings, project).read(reader)
    log.info(
        "stored %s (%d bytes, purpose %s) in %.2fs", record.id, record.bytes, record.purpose,
        time.perf_counter() - started, extra={"file_id": record.id, "bytes": record.bytes},
    )
    return record

