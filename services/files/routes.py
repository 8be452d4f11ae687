"""The Files API handlers: `/v1/files` upload, list, retrieve, delete, and content download."""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web
from aiohttp.helpers import content_disposition_header

from schemas.api_params import FileListParams, FileUploadForm
from schemas.openai_objects import FileDeleted, FileList, FileObject, dump
from schemas.text import cut
from services.files.upload import UploadSlots, receive_upload
from services.http.auth import project_of
from services.http.errors import APIError, not_found
from services.http.openapi import BINARY, operation
from services.http.params import parse_query
from services.http.service import SETTINGS_KEY
from services.state.files import FileRecord, FileStore
from services.stores.s3 import ObjectNotFound

log = logging.getLogger(__name__)

FILE_STORE_KEY = web.AppKey("file_store", FileStore)
UPLOAD_SLOTS_KEY = web.AppKey("upload_slots", UploadSlots)
DOWNLOAD_CHUNK = 1024 * 1024
TAGS = ("files",)
_FILE_ID = {"file_id": "The file's id (`file-…`)."}


def _missing(file_id: str) -> APIError:
    return not_found(f"No such File object: {cut(file_id)}", param="file_id", code="file_not_found")


async def _visible_file(request: web.Request) -> FileRecord:
    file_id = request.match_info["file_id"]
    record = await request.app[FILE_STORE_KEY].get(project_of(request), file_id)
    if record is None:
        raise _missing(file_id)
    return record


@operation(
    "Upload a file",
    body=FileUploadForm,
    body_media_type="multipart/form-data",
    responses={200: FileObject},
    tags=TAGS,
    description=(
        "Streams the file to storage. Limits: `max_file_bytes` (500 MB) per file; a `batch` file must be "
        "JSONL with at most 50,000 lines of at most 6 MB, each a JSON object (a bad line answers 400 "
        "naming its number). At most `project_max_concurrent_uploads` uploads of a project are received at "
        "once (429 beyond); a body that sends nothing for `upload_read_timeout_seconds` is abandoned (408)."
    ),
)
async def create_file(request: web.Request) -> web.Response:
    store, settings, project = request.app[FILE_STORE_KEY], request.app[SETTINGS_KEY], project_of(request)
    with request.app[UPLOAD_SLOTS_KEY].hold(project, settings.project_max_concurrent_uploads):
        record = await receive_upload(request, store, settings, project)
    return web.json_response(record.to_api())


@operation("List files", query=FileListParams, responses={200: FileList}, tags=TAGS)
async def list_files(request: web.Request) -> web.Response:
    params = parse_query(request, FileListParams)
    page = await request.app[FILE_STORE_KEY].list_page(project_of(request), params)
    return web.json_response(page)


@operation("Retrieve a file", responses={200: FileObject}, tags=TAGS, path_params=_FILE_ID)
async def retrieve_file(request: web.Request) -> web.Response:
    return web.json_response((await _visible_file(request)).to_api())


@operation("Delete a file", responses={200: FileDeleted}, tags=TAGS, path_params=_FILE_ID)
async def delete_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    if not await request.app[FILE_STORE_KEY].delete(project_of(request), file_id):
        raise _missing(file_id)
    return web.json_response(dump(FileDeleted(id=file_id, deleted=True)))


@operation("Retrieve a file's content", responses={200: BINARY}, tags=TAGS, path_params=_FILE_ID)
async def file_content(request: web.Request) -> web.StreamResponse:
    record = await _visible_file(request)
    objects = request.app[FILE_STORE_KEY].objects
    chunks = objects.iter_object(record.key, chunk_size=DOWNLOAD_CHUNK)
    async with contextlib.aclosing(chunks):
        # Pull the first chunk before sending headers, so a missing object can still answer 404.
        try:
            first = await anext(chunks, b"")
        except ObjectNotFound:
            log.warning("file %s is visible but its bytes are gone (deleted meanwhile?)", record.id)
            raise _missing(record.id) from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": content_disposition_header("attachment", filename=record.filename),
            }
        )
        response.content_length = record.bytes
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app[UPLOAD_SLOTS_KEY] = UploadSlots()
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files, allow_head=False)
    app.router.add_get("/v1/files/{file_id}", retrieve_file, allow_head=False)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content, allow_head=False)
