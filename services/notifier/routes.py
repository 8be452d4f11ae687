"""The webhook endpoints API, mounted on the public API app with `setup_webhooks(app)`.

openai-python's `client.webhooks.*` calls work unchanged (`create`, `retrieve`, `update`, `list`,
`delete`, `rotate_secret`, `test`, `event_types.list`); deliveries and the callback secret are
offhours extensions (docs/webhooks.md). Every handler filters on the caller's project, so another
project's endpoint or delivery answers 404.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from pydantic import BaseModel

from schemas.api_params import PageParams
from schemas.events import DEFAULT_WEBHOOK_EVENTS, EVENT_TYPES, WebhookEvent
from schemas.webhooks import (
    CallbackSecret,
    CreateWebhookEndpointRequest,
    DeletedWebhookEndpoint,
    DeliveryListQuery,
    RotateSecretRequest,
    TestWebhookEndpointRequest,
    UpdateWebhookEndpointRequest,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointList,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
)
from services.http.auth import project_of
from services.http.errors import APIError, invalid_request, not_found
from services.http.openapi import operation
from services.http.pagination import page_body
from services.http.params import json_object, parse_fields
from services.http.service import DB_KEY, SETTINGS_KEY
from services.http.url_guard import URLPolicy, URLRefused, check_url
from services.notifier.deliveries import DeliveryInFlight, DeliveryStore, delivery_to_api
from services.notifier.endpoints import EndpointStore, active_secrets, endpoint_to_api
from services.notifier.secrets import SecretBox
from services.notifier.sender import Sender
from services.notifier.signing import webhook_headers
from services.settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
TAGS = ("webhooks",)
_OWN_CODES = frozenset({"invalid_url", "invalid_value"})
_ENDPOINT_ID = {"endpoint_id": "The webhook endpoint's id (`whep_…`)."}
_DELIVERY_ID = {"delivery_id": "The delivery's id (`msg_…`), which is also its `webhook-id` header."}
OPENAI_KEEP_OLD_SECONDS = 24 * 3600.0


@dataclass
class WebhooksContext:
    settings: Settings
    endpoints: EndpointStore
    deliveries: DeliveryStore
    policy: URLPolicy
    sender: Sender


WEBHOOKS_KEY = web.AppKey("webhooks", WebhooksContext)


# --- parsing ------------------------------------------------------------------------------


def _parse(model: type[M], data: dict[str, Any]) -> M:
    return parse_fields(model, data, own_codes=_OWN_CODES)


async def _checked_url(ctx: WebhooksContext, url: str) -> None:
    try:
        await check_url(url, ctx.policy)
    except URLRefused as exc:
        raise invalid_request(f"Invalid value for 'url': {exc}.", param="url", code="url_not_allowed") from None


def _endpoint_missing(endpoint_id: str) -> APIError:
    return not_found(f"No webhook endpoint found with id '{endpoint_id}'.", param="endpoint_id",
                     code="webhook_endpoint_not_found")


def _delivery_missing(delivery_id: str) -> APIError:
    return not_found(f"No webhook delivery found with id '{delivery_id}'.", param="delivery_id",
                     code="webhook_delivery_not_found")


async def _endpoint(request: web.Request) -> dict[str, Any]:
    endpoint_id = request.match_info["endpoint_id"]
    doc = await request.app[WEBHOOKS_KEY].endpoints.get(project_of(request), endpoint_id)
    if doc is None:
        raise _endpoint_missing(endpoint_id)
    return doc


def _grace_seconds(ctx: WebhooksContext, req: RotateSecretRequest) -> float:
    if req.keep_old_secret_active_for_24_hours is None:
        return ctx.settings.webhook_secret_grace_seconds
    return OPENAI_KEEP_OLD_SECONDS if req.keep_old_secret_active_for_24_hours else 0.0


# --- endpoints ----------------------------------------------------------------------------


@operation(
    "Create a webhook endpoint",
    body=CreateWebhookEndpointRequest,
    responses={200: WebhookEndpointWithSecret},
    tags=TAGS,
    description=(
        "`url`: http(s), resolving to public addresses only (unless the operator's allowlist says "
        "otherwise). `event_types` (or `events`): default "
        f"{', '.join(DEFAULT_WEBHOOK_EVENTS)}; any of {', '.join(EVENT_TYPES)}. The answer carries "
        "`signing_secret` (`whsec_…`): it is shown here and by rotate_secret only. A project has at most "
        "`project_max_webhook_endpoints` (20) endpoints: one more answers 429 `too_many_webhook_endpoints`."
    ),
)
async def create_endpoint(request: web.Request) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    req = _parse(CreateWebhookEndpointRequest, await json_object(request))
    await _checked_url(ctx, req.url)
    doc, secret = await ctx.endpoints.create(
        project_of(request),
        url=req.url,
        name=req.name or (urlsplit(req.url).hostname or req.url),
        description=req.description,
        event_types=req.event_types or list(DEFAULT_WEBHOOK_EVENTS),
        enabled=req.enabled,
    )
    limit = ctx.settings.project_max_webhook_endpoints
    # Counted after the insert, so two concurrent creates cannot both slip under the limit (at worst
    # both are refused); each endpoint costs deliveries on every event of the project.
    if await ctx.endpoints.count(doc["project"]) > limit:
        await ctx.endpoints.delete(doc["project"], doc["_id"])
        raise APIError(429, f"At most {limit} webhook endpoints are allowed per project; delete one first.",
                       code="too_many_webhook_endpoints")
    log.info("webhook endpoint %s created (project %s)", doc["_id"], doc["project"])
    return web.json_response(endpoint_to_api(doc, secret))


@operation("List webhook endpoints", query=PageParams, responses={200: WebhookEndpointList}, tags=TAGS)
async def list_endpoints(request: web.Request) -> web.Response:
    page = _parse(PageParams, dict(request.query.items()))
    ctx = request.app[WEBHOOKS_KEY]
    return web.json_response(await ctx.endpoints.list_page(project_of(request), page))


@operation("Retrieve a webhook endpoint", responses={200: WebhookEndpoint}, tags=TAGS, path_params=_ENDPOINT_ID)
async def retrieve_endpoint(request: web.Request) -> web.Response:
    return web.json_response(endpoint_to_api(await _endpoint(request)))


@operation(
    "Update a webhook endpoint",
    body=UpdateWebhookEndpointRequest,
    responses={200: WebhookEndpoint},
    tags=TAGS,
    path_params=_ENDPOINT_ID,
    description="The fields given replace the stored ones; `enabled: false` pauses deliveries to the endpoint.",
)
async def update_endpoint(request: web.Request) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    endpoint_id = request.match_info["endpoint_id"]
    req = _parse(UpdateWebhookEndpointRequest, await json_object(request))
    fields = req.model_dump(exclude_unset=True, exclude_none=True)
    if "description" in req.model_fields_set and req.description is None:
        fields["description"] = None  # an explicit null clears it
    if "url" in fields:
        await _checked_url(ctx, fields["url"])
    doc = await ctx.endpoints.update(project_of(request), endpoint_id, fields)
    if doc is None:
        raise _endpoint_missing(endpoint_id)
    return web.json_response(endpoint_to_api(doc))


@operation("Delete a webhook endpoint", responses={200: DeletedWebhookEndpoint}, tags=TAGS,
           path_params=_ENDPOINT_ID,
           description="Its pending deliveries end as `dead`; its delivery history stays readable "
                       "through `GET /v1/webhook_deliveries?endpoint_id=…`.")
async def delete_endpoint(request: web.Request) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    project = project_of(request)
    endpoint_id = request.match_info["endpoint_id"]
    if not await ctx.endpoints.delete(project, endpoint_id):
        raise _endpoint_missing(endpoint_id)
    await ctx.deliveries.end_pending_for_endpoint(project, endpoint_id, "the endpoint was deleted")
    return web.json_response({"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True})


@operation(
    "Rotate a webhook endpoint's signing secret",
    body=RotateSecretRequest,
    responses={200: WebhookEndpointWithSecret},
    tags=TAGS,
    path_params=_ENDPOINT_ID,
    description=(
        "A new `signing_secret` is returned (once). During the grace period deliveries carry both "
        "signatures (`webhook-signature: v1,<new> v1,<old>`), so receivers can switch at their pace. "
        "`keep_old_secret_active_for_24_hours`: absent = the operator's grace period (24 h by default), "
        "false = the old secret stops at once, true = 24 h."
    ),
)
async def rotate_secret(request: web.Request) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    endpoint_id = request.match_info["endpoint_id"]
    req = _parse(RotateSecretRequest, await json_object(request, allow_empty=True))
    rotated = await ctx.endpoints.rotate(project_of(request), endpoint_id, _grace_seconds(ctx, req))
    if rotated is None:
        raise _endpoint_missing(endpoint_id)
    doc, secret = rotated
    return web.json_response(endpoint_to_api(doc, secret))


@operation(
    "Send a sample event to a webhook endpoint",
    body=TestWebhookEndpointRequest,
    responses={200: WebhookEndpointTestResult},
    tags=TAGS,
    path_params=_ENDPOINT_ID,
    description=(
        "Sends one signed sample event (`data.id` = `batch_test`) now and reports the receiver's HTTP "
        "status. Not retried and not recorded as a delivery. A receiver that cannot be reached answers 400 "
        "`webhook_unreachable`."
    ),
)
async def test_endpoint(request: web.Request) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    req = _parse(TestWebhookEndpointRequest, await json_object(request))
    doc = await _endpoint(request)
    now = int(time.time())
    sample = WebhookEvent(id=f"evt_test_{now}", type=req.event_type, created_at=now, data={"id": "batch_test"})
    body = orjson.dumps(sample.model_dump(mode="json"))
    secrets = active_secrets(ctx.endpoints.box, doc, doc["_id"])
    result = await ctx.sender.send(doc["url"], body, webhook_headers(f"msg_test_{now}", body, secrets))
    if result.response_code is None:
        raise invalid_request(f"The endpoint could not be reached: {result.error}.", param="url",
                              code="webhook_unreachable")
    return web.json_response(
        {"object": "webhook_endpoint.test", "event_type": req.event_type, "status_code": result.response_code,
         "success": True, "webhook_endpoint_id": doc["_id"]}
    )


@operation("List the webhook event types", responses={200: WebhookEventTypeList}, tags=TAGS)
async def list_event_types(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": list(EVENT_TYPES)})


# --- deliveries ---------------------------------------------------------------------------


async def _list_deliveries(request: web.Request, endpoint_id: str | None) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    query = _parse(DeliveryListQuery, dict(request.query.items()))
    if endpoint_id is None and query.endpoint_id is None and query.batch_id is None:
        raise invalid_request("Give batch_id or endpoint_id: deliveries are listed per batch or per endpoint.",
                              param="batch_id", code="missing_required_parameter")
    listed = await ctx.deliveries.list(
        project_of(request),
        limit=query.limit,
        after=query.after,
        endpoint_id=endpoint_id or query.endpoint_id,
        batch_id=query.batch_id,
        status=query.status,
    )
    if listed is None:
        raise invalid_request(f"Invalid value for 'after': no delivery with id '{query.after}' in this listing.",
                              param="after", code="invalid_value")
    docs, has_more = listed
    return web.json_response(page_body([delivery_to_api(d) for d in docs], has_more=has_more))


async def _redeliver(request: web.Request, endpoint_id: str | None) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    delivery_id = request.match_info["delivery_id"]
    try:
        doc = await ctx.deliveries.redeliver(
            project_of(request), delivery_id, ctx.settings.webhook_retry_horizon_seconds, endpoint_id
        )
    except DeliveryInFlight:
        raise APIError(409, f"Delivery '{delivery_id}' is being sent right now; try again when it has finished.",
                       param="delivery_id", code="delivery_in_flight") from None
    if doc is None:
        raise _delivery_missing(delivery_id)
    return web.json_response(delivery_to_api(doc))


async def _retrieve_delivery(request: web.Request, endpoint_id: str | None) -> web.Response:
    delivery_id = request.match_info["delivery_id"]
    doc = await request.app[WEBHOOKS_KEY].deliveries.get(project_of(request), delivery_id, endpoint_id)
    if doc is None:
        raise _delivery_missing(delivery_id)
    return web.json_response(delivery_to_api(doc))


@operation("List an endpoint's deliveries", query=DeliveryListQuery, responses={200: WebhookDeliveryList},
           tags=TAGS, path_params=_ENDPOINT_ID,
           description="Newest first, each with its recent attempts (status, latency, response code, error, "
                       "next retry). Filters: `status` (pending, delivered, dead), `batch_id`.")
async def list_endpoint_deliveries(request: web.Request) -> web.Response:
    endpoint = await _endpoint(request)
    return await _list_deliveries(request, endpoint["_id"])


@operation("Retrieve one of an endpoint's deliveries", responses={200: WebhookDelivery}, tags=TAGS,
           path_params={**_ENDPOINT_ID, **_DELIVERY_ID})
async def retrieve_endpoint_delivery(request: web.Request) -> web.Response:
    endpoint = await _endpoint(request)
    return await _retrieve_delivery(request, endpoint["_id"])


@operation("Redeliver", responses={200: WebhookDelivery}, tags=TAGS, path_params={**_ENDPOINT_ID, **_DELIVERY_ID},
           description="Schedules the delivery again now, with the same `webhook-id` (receivers de-duplicate on "
                       "it) and a fresh retry horizon. 409 `delivery_in_flight` while an attempt is running.")
async def redeliver_endpoint_delivery(request: web.Request) -> web.Response:
    endpoint = await _endpoint(request)
    return await _redeliver(request, endpoint["_id"])


@operation("List deliveries", query=DeliveryListQuery, responses={200: WebhookDeliveryList}, tags=TAGS,
           description="One batch's deliveries (`batch_id`, one-off `metadata.callback_url` ones included) or one "
                       "endpoint's (`endpoint_id`); `status` narrows either.")
async def list_all_deliveries(request: web.Request) -> web.Response:
    return await _list_deliveries(request, None)


@operation("Retrieve a delivery", responses={200: WebhookDelivery}, tags=TAGS, path_params=_DELIVERY_ID)
async def retrieve_any_delivery(request: web.Request) -> web.Response:
    return await _retrieve_delivery(request, None)


@operation("Redeliver (any delivery, callbacks included)", responses={200: WebhookDelivery}, tags=TAGS,
           path_params=_DELIVERY_ID)
async def redeliver_any_delivery(request: web.Request) -> web.Response:
    return await _redeliver(request, None)


# --- the project's callback secret --------------------------------------------------------


@operation(
    "Retrieve the callback signing secret",
    responses={200: CallbackSecret},
    tags=TAGS,
    description=(
        "The secret that signs deliveries to a batch's one-off `metadata.callback_url` (created on first "
        "use). Unlike an endpoint's secret it can be read again: a client needs it before the batch exists."
    ),
)
async def retrieve_callback_secret(request: web.Request) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    project = project_of(request)
    doc = await ctx.endpoints.callback_secret_doc(project)
    return web.json_response(ctx.endpoints.callback_secret_to_api(project, doc))


@operation("Rotate the callback signing secret", body=RotateSecretRequest, responses={200: CallbackSecret},
           tags=TAGS, description="Same grace rules as an endpoint's rotate_secret.")
async def rotate_callback_secret(request: web.Request) -> web.Response:
    ctx = request.app[WEBHOOKS_KEY]
    project = project_of(request)
    req = _parse(RotateSecretRequest, await json_object(request, allow_empty=True))
    doc = await ctx.endpoints.rotate_callback_secret(project, _grace_seconds(ctx, req))
    return web.json_response(ctx.endpoints.callback_secret_to_api(project, doc))


# --- mounting -----------------------------------------------------------------------------


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    db = app[DB_KEY]
    endpoints = EndpointStore(db, SecretBox.from_settings(settings))
    deliveries = DeliveryStore(db, ended_ttl_s=settings.webhook_delivery_ttl_seconds)
    await endpoints.ensure_indexes()
    await deliveries.ensure_indexes()
    sender = await Sender.from_settings(settings).start()
    try:
        app[WEBHOOKS_KEY] = WebhooksContext(settings, endpoints, deliveries, URLPolicy.from_settings(settings), sender)
        yield
    finally:
        await sender.close()


def add_webhook_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/webhook_endpoints", create_endpoint)
    r.add_get("/v1/webhook_endpoints", list_endpoints, allow_head=False)
    r.add_get("/v1/webhook_endpoints/{endpoint_id}", retrieve_endpoint, allow_head=False)
    r.add_post("/v1/webhook_endpoints/{endpoint_id}", update_endpoint)
    r.add_delete("/v1/webhook_endpoints/{endpoint_id}", delete_endpoint)
    r.add_post("/v1/webhook_endpoints/{endpoint_id}/rotate_secret", rotate_secret)
    r.add_post("/v1/webhook_endpoints/{endpoint_id}/test", test_endpoint)
    r.add_get("/v1/webhook_endpoints/{endpoint_id}/deliveries", list_endpoint_deliveries, allow_head=False)
    r.add_get("/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}", retrieve_endpoint_delivery,
              allow_head=False)
    r.add_post("/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
               redeliver_endpoint_delivery)
    r.add_get("/v1/webhook_deliveries", list_all_deliveries, allow_head=False)
    r.add_get("/v1/webhook_deliveries/{delivery_id}", retrieve_any_delivery, allow_head=False)
    r.add_post("/v1/webhook_deliveries/{delivery_id}/redeliver", redeliver_any_delivery)
    r.add_get("/v1/webhook_event_types", list_event_types, allow_head=False)
    r.add_get("/v1/webhook_callback_secret", retrieve_callback_secret, allow_head=False)
    r.add_post("/v1/webhook_callback_secret/rotate", rotate_callback_secret)


def setup_webhooks(app: web.Application) -> None:
    """Add the webhook endpoints API to an app from `create_service_app` (MongoDB already open)."""
    app.cleanup_ctx.append(_webhooks_ctx)
    add_webhook_routes(app)
