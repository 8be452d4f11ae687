"""The webhook endpoints API over HTTP, driven by the official `openai` SDK where it has the call."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.support.api import Api, MakeApi
from tests.support.notifier import MakeReceiver, unwrap

DEFAULT_EVENTS = ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


async def test_create_retrieve_update_list_delete_with_the_sdk(api: Api, make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    key, _ = await api.key()
    client = api.client(key)

    created = await client.webhooks.create(url=receiver.url, event_types=["batch.completed"], name="ci")
    assert created.id.startswith("whep_") and created.object == "webhook_endpoint"
    assert created.signing_secret.startswith("whsec_")
    assert len(base64.b64decode(created.signing_secret[len("whsec_"):])) == 32
    assert created.event_types == ["batch.completed"] and created.url == receiver.url and created.name == "ci"
    assert created.signing_secret_hint and created.signing_secret_hint.endswith(created.signing_secret[-4:])

    fetched = await client.webhooks.retrieve(created.id)
    assert fetched.id == created.id and not hasattr(fetched, "signing_secret")
    status, raw = await api.call("GET", f"/v1/webhook_endpoints/{created.id}", key)
    assert status == 200 and "signing_secret" not in raw and raw["enabled"] is True

    updated = await client.webhooks.update(created.id, event_types=["batch.completed", "batch.progress"], name="x")
    assert updated.event_types == ["batch.completed", "batch.progress"] and updated.name == "x"
    unchanged = await client.webhooks.update(created.id, name="x")
    assert unchanged.updated_at == updated.updated_at  # an update that changes nothing is not a change

    others = [await client.webhooks.create(url=receiver.url, event_types=["batch.failed"], name=f"n{i}")
              for i in range(3)]
    page = await client.webhooks.list(limit=2)
    assert [e.id for e in page.data] == [others[2].id, others[1].id] and page.has_more
    everything = [e.id async for e in client.webhooks.list(limit=2)]
    assert everything == [others[2].id, others[1].id, others[0].id, created.id]

    deleted = await client.webhooks.delete(created.id)
    assert deleted.deleted and deleted.id == created.id and deleted.object == "webhook_endpoint.deleted"
    with pytest.raises(openai.NotFoundError):
        await client.webhooks.retrieve(created.id)

    types = await client.webhooks.event_types.list()
    assert "batch.completed" in types.data and "batch.progress" in types.data


async def test_defaults_and_the_events_alias(api: Api, make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    key, _ = await api.key()
    status, body = await api.call("POST", "/v1/webhook_endpoints", key, json={"url": receiver.url})
    assert status == 200, body
    assert body["event_types"] == DEFAULT_EVENTS and body["name"] == "127.0.0.1" and body["enabled"] is True
    status, body = await api.call(
        "POST", "/v1/webhook_endpoints", key,
        json={"url": receiver.url, "events": ["batch.in_progress", "batch.completed"], "description": "d",
              "enabled": False},
    )
    assert status == 200
    assert body["event_types"] == ["batch.in_progress", "batch.completed"]
    assert body["description"] == "d" and body["enabled"] is False


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"url": "RECEIVER", "events": ["batch.completed", "batch.nope"]}, "events", "invalid_value"),
        ({"url": "RECEIVER", "event_types": ["response.completed"]}, "event_types", "invalid_value"),
        ({"url": "RECEIVER", "event_types": []}, "event_types", "invalid_value"),
        ({"url": "ftp://example.com/x"}, "url", "invalid_url"),
        ({"url": "http://"}, "url", "invalid_url"),
        ({"event_types": ["batch.completed"]}, "url", "missing_required_parameter"),
        ({"url": "RECEIVER", "enabled": "yes"}, "enabled", "invalid_value"),
    ],
)
async def test_bad_requests_name_their_parameter(
    api: Api, make_receiver: MakeReceiver, payload: dict[str, object], param: str, code: str
) -> None:
    receiver = await make_receiver()
    key, _ = await api.key()
    body = {k: (receiver.url if v == "RECEIVER" else v) for k, v in payload.items()}
    status, answer = await api.call("POST", "/v1/webhook_endpoints", key, json=body)
    assert status == 400, answer
    assert answer["error"]["param"] == param and answer["error"]["code"] == code
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]


async def test_private_addresses_are_refused_at_registration(make_api: MakeApi) -> None:
    strict = await make_api(webhook_allowlist=[])
    key, _ = await strict.key()
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://169.254.169.254/latest/meta-data",
                "http://10.0.0.8/x", "http://[::1]:9/x"):
        status, answer = await strict.call("POST", "/v1/webhook_endpoints", key, json={"url": url})
        assert status == 400, (url, answer)
        assert answer["error"]["param"] == "url" and answer["error"]["code"] == "url_not_allowed"
        assert "public" in answer["error"]["message"]
    # an update may not sneak one in either
    allowed = await make_api()
    ok_key, _ = await allowed.key()
    status, created = await allowed.call("POST", "/v1/webhook_endpoints", ok_key, json={"url": "http://127.0.0.1:9/"})
    assert status == 200
    status, answer = await strict.call(
        "POST", f"/v1/webhook_endpoints/{created['id']}", ok_key, json={"url": "http://192.168.0.1/x"}
    )
    assert status == 400 and answer["error"]["code"] == "url_not_allowed"


async def test_another_projects_endpoint_is_not_found(api: Api, make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    owner, _ = await api.key()
    stranger, _ = await api.key()
    status, created = await api.call("POST", "/v1/webhook_endpoints", owner, json={"url": receiver.url})
    assert status == 200
    endpoint = created["id"]
    for method, path in [
        ("GET", f"/v1/webhook_endpoints/{endpoint}"),
        ("POST", f"/v1/webhook_endpoints/{endpoint}"),
        ("DELETE", f"/v1/webhook_endpoints/{endpoint}"),
        ("POST", f"/v1/webhook_endpoints/{endpoint}/rotate_secret"),
        ("GET", f"/v1/webhook_endpoints/{endpoint}/deliveries"),
    ]:
        status, answer = await api.call(method, path, stranger, json={})
        assert status == 404, (method, path, answer)
        assert answer["error"]["code"] == "webhook_endpoint_not_found"
    status, listing = await api.call("GET", "/v1/webhook_endpoints", stranger)
    assert status == 200 and listing["data"] == []
    status, _ = await api.call("GET", f"/v1/webhook_endpoints/{endpoint}", owner)
    assert status == 200


async def test_rotate_secret_returns_a_new_secret_once(api: Api, make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver()
    key, _ = await api.key()
    client = api.client(key)
    created = await client.webhooks.create(url=receiver.url, event_types=["batch.completed"], name="r")
    rotated = await client.webhooks.rotate_secret(created.id)
    assert rotated.signing_secret.startswith("whsec_") and rotated.signing_secret != created.signing_secret
    assert rotated.signing_secret_hint != created.signing_secret_hint
    assert not hasattr(await client.webhooks.retrieve(created.id), "signing_secret")


async def test_test_call_sends_a_signed_sample(api: Api, make_receiver: MakeReceiver) -> None:
    receiver = await make_receiver(default=204)
    key, _ = await api.key()
    client = api.client(key)
    created = await client.webhooks.create(url=receiver.url, event_types=["batch.completed"], name="t")
    result = await client.webhooks.test(created.id, event_type="batch.failed")
    assert result.status_code == 204 and result.webhook_endpoint_id == created.id
    (request,) = receiver.requests
    event = unwrap(request, created.signing_secret)
    assert event.type == "batch.failed" and event.data.id == "batch_test"

    receiver.default = 503
    assert (await client.webhooks.test(created.id, event_type="batch.completed")).status_code == 503
    with pytest.raises(openai.BadRequestError):
        await client.webhooks.test(created.id, event_type="response.completed")  # type: ignore[arg-type]


async def test_the_routes_are_in_the_openapi_document(api: Api) -> None:
    async with api.http.get(f"{api.url}/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    paths = doc["paths"]
    for path, method in [
        ("/v1/webhook_endpoints", "post"),
        ("/v1/webhook_endpoints/{endpoint_id}/rotate_secret", "post"),
        ("/v1/webhook_endpoints/{endpoint_id}/deliveries", "get"),
        ("/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver", "post"),
        ("/v1/webhook_deliveries", "get"),
        ("/v1/webhook_callback_secret", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert "WebhookEndpointWithSecret" in doc["components"]["schemas"]
