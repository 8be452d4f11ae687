"""The Batches API handlers: `/v1/batches` create, list, retrieve, cancel (retry: retry.py).

The API only writes state and publishes events; the dispatcher validates and runs batches.
Every write that changes a status is followed at once by `publish_outbox` (docs/architecture.md).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from schemas.batch_api import NOT_HTTP, VALIDATION_CODES, BatchListQuery, CreateBatchRequest, url_problem
from schemas.inference import CHAT_DS_TEST
from schemas.openai_objects import TERMINAL_STATUSES, Batch, BatchList
from schemas.text import cut, quote
from services.batches.context import BATCHES_KEY, BatchesContext
from services.batches.peek import first_model
from services.http.auth import project_of
from services.http.errors import APIError, invalid_request, not_found
from services.http.openapi import operation
from services.http.pagination import page_body
from services.http.params import json_object, parse_fields
from services.http.url_guard import URLPolicy, URLRefused, check_url
from services.state.batches import CursorNotFound, Doc, new_batch_document, new_batch_id, to_api
from services.stores.s3 import ObjectNotFound

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
TAGS = ("batches",)
_BATCH_ID = {"batch_id": "The batch's id (`batch_…`)."}
CANCELLABLE = ("validating", "in_progress")


def parse_request(model: type[M], data: dict[str, Any]) -> M:
    return parse_fields(model, data, own_codes=VALIDATION_CODES)


def json_body(body: Any) -> web.Response:
    # orjson writes UTF-8 rather than \u escapes (up to 12 bytes a character), so the Batch object's
    # size bound (schemas.openai_objects) holds for the bytes on the wire too.
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def batch_missing(batch_id: str) -> APIError:
    return not_found(f"No batch found with id '{cut(batch_id)}'.", param="batch_id", code="batch_not_found")


def _file_missing(file_id: str) -> APIError:
    return not_found(f"No such File object: {cut(file_id)}", param="input_file_id", code="file_not_found")


def _expires_in(ctx: BatchesContext, req: CreateBatchRequest) -> float:
    override = ctx.settings.batch_window_override_seconds
    return override if override is not None else req.window_hours * 3600.0


async def _input_of(
    ctx: BatchesContext, project: str, req: CreateBatchRequest, batch_id: str
) -> tuple[dict[str, Any], str | None]:
    """The stored `input` reference and the model its first line names (None: not known yet).

    The input file is pinned for the batch, so deleting or expiring it while the batch runs
    hides it from the API but keeps its bytes until the batch is terminal (the dispatcher unpins).
    """
    if req.is_url:
        # The dispatcher copies the URL into S3 during validation; the model is known then.
        return {"kind": "url", "url": req.input_file_id}, None
    record = await ctx.files.pin(project, req.input_file_id, batch_id)
    if record is None:
        raise _file_missing(req.input_file_id)
    if record.purpose != "batch":
        raise invalid_request(
            f"File {record.id} has purpose '{record.purpose}'; a batch needs a file uploaded with purpose 'batch'.",
            param="input_file_id", code="invalid_file_purpose",
        )
    if record.bytes > ctx.settings.max_file_bytes:
        raise invalid_request(
            f"File {record.id} is {record.bytes} bytes; the limit is {ctx.settings.max_file_bytes} bytes.",
            param="input_file_id", code="file_too_large",
        )
    settings = ctx.settings
    try:
        # As far as a limited model's whole file may reach (see services/batches/peek.py), and at
        # least one whole line.
        model = await first_model(
            ctx.objects, record.key, max_line_bytes=settings.max_line_bytes,
            max_bytes=max(settings.max_line_bytes + 1, settings.test_model_max_file_bytes),
        )
    except ObjectNotFound:
        # Visible but its bytes are gone: it is being deleted right now.
        raise _file_missing(record.id) from None
    return {"kind": "file", "key": record.key, "bytes": record.bytes, "lines": record.lines}, model


async def _check_callback_url(ctx: BatchesContext, req: CreateBatchRequest) -> None:
    """A one-off `metadata.callback_url` is held to the notifier's URL policy now, so a URL that
    could never be delivered to (or would reach into the private network) is a 400, not a dead letter."""
    url = (req.metadata or {}).get("callback_url")
    if url is None:
        return
    problem = url_problem(url)
    if problem is not None and problem != NOT_HTTP:
        raise invalid_request(f"Invalid value for 'metadata.callback_url': {problem}.",
                              param="metadata.callback_url", code="invalid_url")
    try:
        await check_url(url, URLPolicy.from_settings(ctx.settings))
    except URLRefused as exc:
        raise invalid_request(
            f"Invalid value for 'metadata.callback_url': {exc}.", param="metadata.callback_url",
            code="url_not_allowed",
        ) from None


async def _check_input_url(ctx: BatchesContext, req: CreateBatchRequest) -> None:
    """An input URL is held to the input URL policy now, so one that reaches into the private network
    (or nowhere) is a 400 at create; the dispatcher checks again at fetch, since DNS can change."""
    if not req.is_url:
        return
    try:
        await check_url(req.input_file_id, URLPolicy.for_inputs(ctx.settings))
    except URLRefused as exc:
        # The guard's refusals name the kind of address, never the address or the name it resolved to.
        raise invalid_request(
            f"Invalid value for 'input_file_id': {exc}.", param="input_file_id", code="url_not_allowed"
        ) from None


def _too_many_running(limit: int, what: str, setting: str) -> APIError:
    return APIError(
        429,
        f"At most {limit} {what} may be running at once per project (validating, in_progress, finalizing or "
        f"cancelling; setting {setting}); wait for one to end.",
        code="too_many_running_batches",
    )


async def create_batch(ctx: BatchesContext, project: str, req: CreateBatchRequest) -> Doc:
    """Check, insert in `validating` with its `batch.created` event, publish; the new document."""
    await _check_callback_url(ctx, req)
    await _check_input_url(ctx, req)
    batch_id = new_batch_id()
    try:
        return await _create_pinned(ctx, project, req, batch_id)
    except Exception:
        if not req.is_url:
            await ctx.files.unpin(req.input_file_id, batch_id)
        raise


async def _create_pinned(ctx: BatchesContext, project: str, req: CreateBatchRequest, batch_id: str) -> Doc:
    input_ref, model = await _input_of(ctx, project, req, batch_id)
    limited = ctx.limited_models
    if req.endpoint == CHAT_DS_TEST and limited.ds_test_model is not None:
        # Only one model serves the test endpoint; lines naming another fail validation as mismatched.
        model = limited.ds_test_model
    is_limited = model in limited.names
    if is_limited and input_ref.get("bytes", 0) > ctx.settings.test_model_max_file_bytes:
        raise invalid_request(
            f"A {model} batch takes a file of at most {ctx.settings.test_model_max_file_bytes} bytes; "
            f"{req.input_file_id} has {input_ref['bytes']}.",
            param="input_file_id", code="file_too_large",
        )
    doc = new_batch_document(
        project=project,
        endpoint=req.endpoint,
        input_file_id=req.input_file_id,
        input=input_ref,
        completion_window=req.completion_window,
        expires_in_s=_expires_in(ctx, req),
        metadata=req.metadata,
        model=model,
        batch_id=batch_id,
        output_expires_after=(None if req.output_expires_after is None
                              else req.output_expires_after.model_dump(mode="json")),
    )
    await ctx.store.insert(doc)
    # Counted after the insert, so two concurrent creates cannot both slip under a limit (at worst
    # both are refused); the refused batch is removed before its event is sent.
    settings = ctx.settings
    refusal: APIError | None = None
    if (is_limited and model is not None
            and await ctx.store.count_running(project, model) > settings.test_model_max_running):
        refusal = _too_many_running(settings.test_model_max_running, f"{model} batches", "test_model_max_running")
    limits = await ctx.projects.get(project)
    if refusal is None and await ctx.store.count_running(project) > limits.max_running:
        refusal = _too_many_running(limits.max_running, "batches",
                                    "the project's max_running, default project_max_running_batches")
    if refusal is None:
        # The new batch counts nothing yet (it is still validating without a plan): `lines` is its share.
        problem = await ctx.projects.quota_problem(project, model, int(input_ref.get("lines") or 0))
        if problem is not None:
            refusal = APIError(429, f"Too many requests enqueued: {problem}.", code="too_many_enqueued_requests")
    if refusal is not None:
        await ctx.store.delete(doc["_id"])
        raise refusal
    await ctx.publisher.publish_outbox(doc)
    log.info("batch %s created (project %s, endpoint %s, model %s)", doc["_id"], project, req.endpoint, model)
    return doc


@operation(
    "Create a batch",
    body=CreateBatchRequest,
    responses={200: Batch},
    tags=TAGS,
    description=(
        "`input_file_id`: a file with purpose `batch`, or an http(s) URL of a JSONL file. "
        "`completion_window`: `24h` to `336h`, in `h` or `d`. `metadata`: at most 16 pairs, keys up to 64 "
        "and values up to 512 characters (`ds_name` 100, `ds_description` 200). `output_expires_after`: "
        "`{anchor: created_at, seconds: 3600..2592000}`, when the output and error files expire after their "
        "creation. The batch starts in `validating`; the dispatcher checks every line."
    ),
)
async def create_batch_handler(request: web.Request) -> web.Response:
    req = parse_request(CreateBatchRequest, await json_object(request))
    doc = await create_batch(request.app[BATCHES_KEY], project_of(request), req)
    return json_body(to_api(doc))


@operation("List batches", query=BatchListQuery, responses={200: BatchList}, tags=TAGS,
           description="Newest first. Filters: `ds_name` (substring of `metadata.ds_name`), `input_file_ids` "
                       "(comma list, up to 20), `status` (comma list), `create_after` / `create_before` "
                       "(`yyyyMMddHHmmss`, UTC; `create_after <= created_at < create_before`).")
async def list_batches(request: web.Request) -> web.Response:
    query = parse_request(BatchListQuery, dict(request.query.items()))
    ctx = request.app[BATCHES_KEY]
    try:
        docs, has_more = await ctx.store.list(
            project_of(request),
            after=query.after,
            limit=query.limit,
            statuses=query.status,
            ds_name=query.ds_name,
            input_file_ids=query.input_file_ids,
            create_after=query.create_after,
            create_before=query.create_before,
        )
    except CursorNotFound:
        raise invalid_request(f"Invalid value for 'after': no batch with id {quote(query.after)}.",
                              param="after", code="invalid_value") from None
    return json_body(page_body([to_api(d) for d in docs], has_more=has_more))


@operation("Retrieve a batch", responses={200: Batch}, tags=TAGS, path_params=_BATCH_ID)
async def retrieve_batch(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    doc = await request.app[BATCHES_KEY].store.get(batch_id, project_of(request))
    if doc is None:
        raise batch_missing(batch_id)
    return json_body(to_api(doc))


async def cancel_batch(ctx: BatchesContext, project: str, batch_id: str) -> Doc:
    """CAS `validating|in_progress -> cancelling`; an already cancelling batch is returned as it is."""
    doc = await ctx.store.get(batch_id, project)
    if doc is None:
        raise batch_missing(batch_id)
    if doc["status"] in CANCELLABLE:
        new = await ctx.store.transition(batch_id, CANCELLABLE, "cancelling")
        if new is not None:
            await ctx.publisher.publish_outbox(new)
            log.info("batch %s cancelling", batch_id)
            return new
        # Lost the race to the dispatcher (or another cancel): judge the status it has now.
        doc = await ctx.store.get(batch_id, project)
        if doc is None:
            raise batch_missing(batch_id)
    if doc["status"] in ("cancelling", "cancelled"):
        return doc
    status = doc["status"]
    why = "it has already ended" if status in TERMINAL_STATUSES else "its output is being written"
    raise invalid_request(f"Cannot cancel a batch with status '{status}': {why}.", code="batch_not_cancellable")


@operation("Cancel a batch", responses={200: Batch}, tags=TAGS, path_params=_BATCH_ID,
           description="`validating` or `in_progress` -> `cancelling`; the dispatcher drains in-flight work and "
                       "ends the batch `cancelled` with partial output. Cancelling a `cancelling` batch is a no-op.")
async def cancel_batch_handler(request: web.Request) -> web.Response:
    doc = await cancel_batch(request.app[BATCHES_KEY], project_of(request), request.match_info["batch_id"])
    return json_body(to_api(doc))


def add_batch_routes(app: web.Application) -> None:
    app.router.add_post("/v1/batches", create_batch_handler)
    app.router.add_get("/v1/batches", list_batches, allow_head=False)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch, allow_head=False)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch_handler)
