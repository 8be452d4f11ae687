"""`POST /v1/batches/{batch_id}/retry` (an extension): a new batch of the lines that did not finish.

On a batch that has ended (`completed`, `expired` or `cancelled`), the lines whose outcome was
retriable (schemas/retriable.py: `batch_cancelled`, `batch_expired`, `engine_unavailable`,
`engine_error`, engine answers 408/429/5xx) become the input of a new batch in the same project,
created like any other (same endpoint, completion window and output expiry; metadata copied plus
`retry_of`). The original batch gets the new one's id in `retried_by`.

Which lines: the error file names them. Finalize writes it in input order and every error line
carries its input line number, so a merge of the error file with the original input (both
streamed front to back) copies exactly those lines, byte for byte with their custom_ids, into a
new `batch` file (an S3 multipart write). Memory is one read buffer and one line per stream,
whatever the batch size; the user uploads nothing.

Not retriable: a `failed` batch (it failed validation and ran nothing: fix the input and create a
new batch), a batch without an error file, and a batch whose input was a URL (its copy is deleted
when the batch ends; create a new batch from the URL). The original's input and error files must
still exist: a deleted or expired one answers 400 `input_unavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from schemas.batch_api import METADATA_MAX_PAIRS, CreateBatchRequest
from schemas.jsonl import LineSplitter, RawLine
from schemas.openai_objects import TERMINAL_STATUSES, Batch
from schemas.retriable import is_retriable
from schemas.text import quote
from services.batches.context import BATCHES_KEY, BatchesContext
from services.batches.handlers import TAGS, batch_missing, create_batch, json_body, parse_request
from services.http.auth import project_of
from services.http.errors import APIError, invalid_request
from services.http.openapi import operation
from services.state.batches import Doc, to_api
from services.state.files import FileRecord, new_file_id
from services.stores.s3 import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

RETRY_OF = "retry_of"  # the metadata key that links a retry to its original
RETRIED_BY = "retried_by"  # the original's field naming its newest retry
RETRYABLE_STATUSES = ("completed", "expired", "cancelled")
READ_SIZE = 1024 * 1024
# An error line holds the engine's answer too (its body), so it may be longer than an input line;
# a line past this is logged and not retried rather than held whole.
MAX_RESULT_LINE_BYTES = 32 * 1024 * 1024


class RetryInputMismatch(RuntimeError):
    """The error file names a line the input does not have: a broken invariant, never a user error."""


@dataclass(frozen=True, slots=True)
class Wanted:
    number: int  # the input line
    custom_id: str | None


def _nothing_to_retry(batch_id: str, why: str) -> APIError:
    return invalid_request(f"Batch {batch_id} has nothing to retry: {why}.", code="nothing_to_retry")


def _input_unavailable(batch_id: str, why: str) -> APIError:
    return invalid_request(f"Cannot retry batch {batch_id}: {why}.", param="batch_id", code="input_unavailable")


async def _lines(objects: ObjectStore, key: str, max_line_bytes: int) -> AsyncIterator[RawLine]:
    splitter = LineSplitter(max_line_bytes)
    async for data in objects.iter_object(key, chunk_size=READ_SIZE):
        for raw in splitter.feed(data):
            yield raw
    for raw in splitter.finish():
        yield raw


def _line_number(obj: dict[str, Any]) -> int | None:
    """The input line an error line answers: `error.line`, else the number its `id` ends in."""
    error = obj.get("error")
    line = error.get("line") if isinstance(error, dict) else None
    if type(line) is int and line > 0:
        return line
    line_id = obj.get("id")
    if isinstance(line_id, str):
        digits = line_id.rpartition("_")[2]
        if digits.isdigit():
            return int(digits)
    return None


async def retriable_lines(objects: ObjectStore, error_key: str) -> AsyncIterator[Wanted]:
    """The retriable lines of an error file, in input order (the order finalize wrote them in)."""
    last = 0
    async for raw in _lines(objects, error_key, MAX_RESULT_LINE_BYTES):
        if raw.oversize:
            log.warning("retry: line %d of %s is over %d bytes; it is not retried", raw.number, error_key,
                        MAX_RESULT_LINE_BYTES)
            continue
        if not raw.data.strip():
            continue
        try:
            obj = orjson.loads(raw.data)
        except orjson.JSONDecodeError:
            log.warning("retry: line %d of %s is not JSON; it is not retried", raw.number, error_key)
            continue
        if not isinstance(obj, dict) or not is_retriable(obj.get("error"), obj.get("response")):
            continue
        number = _line_number(obj)
        if number is None:
            log.warning("retry: line %d of %s names no input line; it is not retried", raw.number, error_key)
            continue
        if number <= last:
            raise RetryInputMismatch(f"{error_key} answers input line {number} after line {last}")
        last = number
        custom_id = obj.get("custom_id")
        yield Wanted(number, custom_id if isinstance(custom_id, str) else None)


def _custom_id_of(data: bytes) -> Any:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj.get("custom_id") if isinstance(obj, dict) else None


async def copy_retriable_lines(
    ctx: BatchesContext, project: str, original: Doc, input_key: str, error_key: str
) -> FileRecord | None:
    """A new `batch` file of the project holding the original's retriable input lines; None if none.

    The file is written like an upload (`uploading` until complete), so a process that dies here
    leaves only what the files sweeper reclaims.
    """
    objects, files, settings = ctx.objects, ctx.files, ctx.settings
    wanted = retriable_lines(objects, error_key)
    try:
        nxt = await anext(wanted, None)
        if nxt is None:
            return None
        pending = await files.begin_upload(project, new_file_id(), f"{original['_id']}_retry.jsonl")
        size = 0
        try:
            async with objects.multipart_writer(pending.key, content_type="application/jsonl") as writer:
                async for raw in _lines(objects, input_key, settings.max_line_bytes):
                    if raw.number < nxt.number:
                        continue
                    if raw.number > nxt.number or raw.oversize or _custom_id_of(raw.data) != nxt.custom_id:
                        raise RetryInputMismatch(
                            f"input line {nxt.number} of {original['_id']} is not the line its error file names "
                            f"(custom_id {quote(_custom_id_of(raw.data))} at line {raw.number}, "
                            f"expected {quote(nxt.custom_id)})")
                    await writer.write(raw.data + b"\n")
                    size += len(raw.data) + 1
                    nxt = await anext(wanted, None)
                    if nxt is None:
                        break
                if nxt is not None:
                    raise RetryInputMismatch(f"the input of {original['_id']} ends before line {nxt.number}")
        except BaseException:
            await files.discard_upload(pending.file_id)
            raise
    finally:
        await wanted.aclose()
    ttl = settings.files_batch_default_expires_seconds
    record = await files.finish_upload(
        pending, purpose="batch", size=size, expires_at=pending.created_at + ttl if ttl > 0 else None)
    if record is None:  # the sweeper took it for an abandoned upload: only after hours of nothing
        raise APIError(500, "Writing the retry's input took too long; please retry.", type="server_error")
    return record


def _retry_request(original: Doc, input_file_id: str) -> CreateBatchRequest:
    batch_id = original["_id"]
    metadata = {**(original.get("metadata") or {}), RETRY_OF: batch_id}
    if len(metadata) > METADATA_MAX_PAIRS:
        raise invalid_request(
            f"Cannot retry batch {batch_id}: its metadata has {METADATA_MAX_PAIRS} pairs already, and the retry "
            f"adds '{RETRY_OF}'.", param="batch_id", code="metadata_too_many_pairs")
    fields: dict[str, Any] = {
        "input_file_id": input_file_id,
        "endpoint": original["endpoint"],
        "completion_window": original["completion_window"],
        "metadata": metadata,
    }
    if original.get("output_expires_after") is not None:
        fields["output_expires_after"] = original["output_expires_after"]
    return parse_request(CreateBatchRequest, fields)


async def retry_batch(ctx: BatchesContext, project: str, batch_id: str) -> Doc:
    """Create the retry of `batch_id` and link the two; the new batch's document."""
    original = await ctx.store.get(batch_id, project)
    if original is None:
        raise batch_missing(batch_id)
    status = original["status"]
    if status not in TERMINAL_STATUSES:
        raise APIError(
            409, f"Cannot retry batch {batch_id} while it is '{status}': only a batch that has ended "
            "(completed, expired or cancelled) can be retried. Wait for it to end, or cancel it.",
            code="batch_not_ended")
    if status not in RETRYABLE_STATUSES:
        raise _nothing_to_retry(batch_id, "it failed validation and ran no request; fix its input and create "
                                "a new batch")
    if not original.get("error_file_id") or not (original.get("request_counts") or {}).get("failed", 1):
        raise _nothing_to_retry(batch_id, "every request succeeded")
    if (original.get("input") or {}).get("kind") != "file":
        raise _input_unavailable(batch_id, "its input was a URL, whose copy is deleted when the batch ends; "
                                 "create a new batch from the URL")
    source = await ctx.files.get(project, original["input_file_id"])
    if source is None:
        raise _input_unavailable(batch_id, f"its input file {original['input_file_id']} has been deleted or "
                                 "has expired")
    errors = await ctx.files.get(project, original["error_file_id"])
    if errors is None:
        raise _input_unavailable(batch_id, f"its error file {original['error_file_id']}, which names the lines "
                                 "to retry, has been deleted or has expired")
    try:
        new_input = await copy_retriable_lines(ctx, project, original, source.key, errors.key)
    except ObjectNotFound:
        # Deleted between the check above and the read.
        raise _input_unavailable(batch_id, "its input or error file was deleted meanwhile") from None
    if new_input is None:
        raise _nothing_to_retry(
            batch_id, "none of its failed requests is retriable (only batch_cancelled, batch_expired, "
            "engine_unavailable, engine_error and engine answers with status 408, 429 or 5xx are; validation "
            "errors and other 4xx answers would fail again)")
    try:
        doc = await create_batch(ctx, project, _retry_request(original, new_input.id))
    except BaseException:
        await ctx.files.delete(project, new_input.id)
        raise
    # After the create: a crash in between leaves a retry whose `metadata.retry_of` still names the original.
    await ctx.store.update_fields(batch_id, {RETRIED_BY: doc["_id"]})
    log.info("batch %s retried as %s (input %s)", batch_id, doc["_id"], new_input.id)
    return doc


@operation(
    "Retry a batch's unfinished requests",
    responses={200: Batch},
    tags=TAGS,
    path_params={"batch_id": "The ended batch to retry (`batch_…`)."},
    description=(
        "An extension. On a `completed`, `expired` or `cancelled` batch: creates a new batch of the requests "
        "whose outcome was retriable (`batch_cancelled`, `batch_expired`, `engine_unavailable`, `engine_error`, "
        "engine answers 408/429/5xx), read from the original input with their custom_ids; same endpoint, "
        "completion window and output expiry, metadata copied plus `retry_of`. The original's `retried_by` "
        "names the new batch. Answers the new Batch (200, as a create). 400 `nothing_to_retry` when no request "
        "is retriable (or the batch failed validation), 400 `input_unavailable` when the input or error file is "
        "gone or the input was a URL, 409 `batch_not_ended` while the batch runs."
    ),
)
async def retry_batch_handler(request: web.Request) -> web.Response:
    doc = await retry_batch(request.app[BATCHES_KEY], project_of(request), request.match_info["batch_id"])
    return json_body(to_api(doc))


def add_retry_route(app: web.Application) -> None:
    app.router.add_post("/v1/batches/{batch_id}/retry", retry_batch_handler)
