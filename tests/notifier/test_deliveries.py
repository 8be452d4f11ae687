"""Deliveries end to end on the real servers: batch events on Kafka -> notifier -> a real HTTP receiver.

Events are published by the real batches store and outbox publisher (tests/notifier/conftest.py,
`batches`), so their shape is the contract's; tests/notifier/test_batch_flow.py runs whole batches.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from schemas.events import batch_event
from services.state.batches import to_api
from tests.support.api import Api, MakeApi
from tests.support.notifier import Batches, MakeReceiver, StartNotifier, unwrap
from tests.support.wait import wait_for


async def _endpoint(api: Api, key: str, url: str, events: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["event_types"] = events
    status, created = await api.call("POST", "/v1/webhook_endpoints", key, json=body)
    assert status == 200, created
    return created


async def _deliveries(api: Api, key: str, endpoint_id: str, **query: str) -> list[dict[str, Any]]:
    status, page = await api.call("GET", f"/v1/webhook_endpoints/{endpoint_id}/deliveries", key, params=query)
    assert status == 200, page
    return page["data"]


async def test_a_completed_batch_is_one_signed_post_the_sdk_verifies(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver()
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier()
    batch_id = await batches.complete(project)

    (request,) = await receiver.wait_for(1)
    event = unwrap(request, endpoint["signing_secret"])
    assert event.type == "batch.completed" and event.data.id == batch_id
    assert orjson.loads(request.body) == {
        "id": event.id, "object": "event", "type": "batch.completed", "created_at": event.created_at,
        "data": {"id": batch_id},
    }
    assert event.id.startswith("evt_") and request.headers["webhook-id"].startswith("msg_")

    async def delivered() -> list[dict[str, Any]]:
        found = await _deliveries(api, key, endpoint["id"])
        return found if found and found[0]["status"] == "delivered" else []

    (delivery,) = await wait_for(delivered, what="the delivery to be recorded")
    assert delivery["id"] == request.headers["webhook-id"] and delivery["batch_id"] == batch_id
    assert delivery["attempt_count"] == 1 and delivery["attempts"][0]["response_code"] == 200
    assert delivery["attempts"][0]["outcome"] == "succeeded" and delivery["next_retry_at"] is None
    # only the subscribed (default: terminal) events were sent: created/in_progress/finalizing were not
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1


async def test_500_three_times_then_200_is_delivered_with_one_webhook_id(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver(answers=[500, 500, 500])
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier()
    await batches.complete(project)

    requests = await receiver.wait_for(4)
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1  # the same payload every time; only the signature is fresh
    for request in requests:
        unwrap(request, endpoint["signing_secret"])

    async def delivered() -> list[dict[str, Any]]:
        return await _deliveries(api, key, endpoint["id"], status="delivered")

    (delivery,) = await wait_for(delivered, what="status delivered")
    assert delivery["attempt_count"] == 4
    assert [a["response_code"] for a in delivery["attempts"]] == [500, 500, 500, 200]
    assert [a["outcome"] for a in delivery["attempts"]] == ["failed"] * 3 + ["succeeded"]
    assert all(a["next_retry_at"] is not None for a in delivery["attempts"][:3])
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 4  # delivered once more, then never again


async def test_retries_stop_at_the_horizon_and_the_delivery_is_dead(
    make_api: MakeApi, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver(default=503)
    api = await make_api()
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier(webhook_retry_horizon_seconds=1.0)
    await batches.complete(project)

    async def dead() -> list[dict[str, Any]]:
        return await _deliveries(api, key, endpoint["id"], status="dead")

    (delivery,) = await wait_for(dead, what="the delivery to be dead-lettered")
    assert delivery["attempt_count"] >= 2 and delivery["dead_at"] is not None
    assert delivery["last_error"] == "HTTP 503" and delivery["attempts"][-1]["next_retry_at"] is None
    sent = len(receiver.requests)
    assert sent == delivery["attempt_count"]
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == sent

    # redeliver: the same webhook-id again, with a fresh horizon
    receiver.default = 200
    status, again = await api.call(
        "POST", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries/{delivery['id']}/redeliver", key
    )
    assert status == 200 and again["status"] == "pending"
    await receiver.wait_for(sent + 1)
    assert receiver.requests[-1].headers["webhook-id"] == delivery["id"]
    unwrap(receiver.requests[-1], endpoint["signing_secret"])


async def test_a_receiver_that_never_answers_does_not_hold_up_another(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    stuck = await make_receiver(hang=True)
    healthy = await make_receiver()
    key, project = await api.key()
    await _endpoint(api, key, stuck.url)
    other = await _endpoint(api, key, healthy.url)
    # Fewer overall slots than the stuck endpoint has deliveries: only the per-endpoint bound keeps them
    # from taking every slot.
    await start_notifier(webhook_max_concurrency=4, webhook_max_concurrency_per_endpoint=2,
                         webhook_timeout_seconds=120.0)
    batch_ids = [await batches.complete(project) for _ in range(8)]

    received = await healthy.wait_for(8)
    assert {unwrap(r, other["signing_secret"]).data.id for r in received} == set(batch_ids)
    # ...while the stuck receiver still holds its first requests, none answered yet
    await stuck.wait_for(1)
    assert stuck.answered == 0 and len(stuck.requests) <= 2
    stuck.release.set()
    await stuck.wait_for(8)


async def test_a_private_address_is_refused_at_delivery_too(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    """Registered while the operator allowed loopback; the notifier's policy no longer does (think: DNS
    that changed since registration). Nothing is sent, and the delivery says why."""
    receiver = await make_receiver()
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier(webhook_allowlist=[])
    await batches.complete(project)

    async def dead() -> list[dict[str, Any]]:
        return await _deliveries(api, key, endpoint["id"], status="dead")

    (delivery,) = await wait_for(dead, what="the refused delivery")
    assert delivery["attempt_count"] == 1  # a refusal is final: retrying cannot change the policy
    assert "loopback address" in delivery["last_error"] and "127.0.0.1" not in delivery["last_error"]
    assert delivery["attempts"][0]["response_code"] is None
    assert receiver.requests == []


async def test_redirects_are_not_followed(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    target = await make_receiver()
    bouncer = await make_receiver(answers=[302], extra={"Location": target.url})
    key, project = await api.key()
    endpoint = await _endpoint(api, key, bouncer.url)
    await start_notifier()
    await batches.complete(project)

    async def retried() -> list[dict[str, Any]]:
        found = await _deliveries(api, key, endpoint["id"], status="delivered")
        return found

    (delivery,) = await wait_for(retried, what="delivery after the redirect")
    first = delivery["attempts"][0]
    assert first["response_code"] == 302 and "redirect not followed" in first["error"]
    assert target.requests == []


async def test_rotation_both_signatures_present_and_each_verifies(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver()
    key, project = await api.key()
    client = api.client(key)
    created = await client.webhooks.create(url=receiver.url, event_types=["batch.completed"], name="rot")
    rotated = await client.webhooks.rotate_secret(created.id)
    await start_notifier()
    await batches.complete(project)

    (request,) = await receiver.wait_for(1)
    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert unwrap(request, rotated.signing_secret).type == "batch.completed"
    assert unwrap(request, created.signing_secret).type == "batch.completed"

    # without a grace period the old secret stops signing at once
    again = await client.webhooks.rotate_secret(created.id, keep_old_secret_active_for_24_hours=False)
    await batches.complete(project)
    (_, second) = await receiver.wait_for(2)
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    unwrap(second, again.signing_secret)


async def test_progress_events_only_for_endpoints_that_ask(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    everything = await make_receiver()
    terminal = await make_receiver()
    key, project = await api.key()
    await _endpoint(api, key, everything.url, ["batch.in_progress", "batch.progress", "batch.completed"])
    await _endpoint(api, key, terminal.url)
    await start_notifier()
    batch_id = await batches.create(project)
    await batches.advance(batch_id, ["in_progress"])
    doc = await batches.store.update_fields(batch_id, {"request_counts.completed": 1}, progress_seq=1)
    await batches.publisher.publish_outbox(doc)
    await batches.advance(batch_id, ["finalizing", "completed"])

    got = await everything.wait_for(3)
    types = sorted(orjson.loads(r.body)["type"] for r in got)
    assert types == ["batch.completed", "batch.in_progress", "batch.progress"]
    (only,) = await terminal.wait_for(1)
    assert orjson.loads(only.body)["type"] == "batch.completed"


async def test_a_redelivered_event_creates_no_second_delivery(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver()
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier()
    batch_id = await batches.complete(project)
    await receiver.wait_for(1)
    # the outbox republishes an event after a crash: same CloudEvent id, same delivery document
    doc = await batches.store.get(batch_id)
    event = batch_event("batch.completed", to_api(doc), at=doc["completed_at"])
    await batches.publisher.producer.send(batches.publisher.topic, batch_id, orjson.dumps(event.model_dump()))
    await batches.complete(project)  # a later event proves the republished one was consumed
    await receiver.wait_for(2)
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 2
    assert len(await _deliveries(api, key, endpoint["id"])) == 2


async def test_metadata_callback_url_is_signed_with_the_project_callback_secret(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver()
    key, project = await api.key()
    status, secret = await api.call("GET", "/v1/webhook_callback_secret", key)
    assert status == 200 and secret["signing_secret"].startswith("whsec_")
    status, same = await api.call("GET", "/v1/webhook_callback_secret", key)
    assert same["signing_secret"] == secret["signing_secret"]
    await start_notifier()
    batch_id = await batches.complete(project, metadata={"callback_url": receiver.url})

    (request,) = await receiver.wait_for(1)
    event = unwrap(request, secret["signing_secret"])
    assert event.type == "batch.completed" and event.data.id == batch_id

    async def listed() -> list[dict[str, Any]]:
        _, page = await api.call("GET", "/v1/webhook_deliveries", key, params={"batch_id": batch_id})
        return page["data"] if page["data"] and page["data"][0]["status"] == "delivered" else []

    (delivery,) = await wait_for(listed, what="the callback delivery")
    assert delivery["endpoint_id"] is None and delivery["callback_url"] == receiver.url
    other_key, _ = await api.key()
    status, _ = await api.call("GET", f"/v1/webhook_deliveries/{delivery['id']}", other_key)
    assert status == 404


async def test_a_first_attempt_slower_than_the_insert_is_recorded_when_it_ends(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    """The delivery is written (claimed) while its first attempt is still waiting for the receiver; the
    attempt's result lands on it afterwards."""
    receiver = await make_receiver(delay_s=2.5)
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier()
    await batches.complete(project)

    async def pending_while_in_flight() -> list[dict[str, Any]]:
        found = await _deliveries(api, key, endpoint["id"])
        return found if found and len(receiver.requests) == 1 and receiver.answered == 0 else []

    (in_flight,) = await wait_for(pending_while_in_flight, what="the delivery written during its attempt")
    assert in_flight["status"] == "pending" and in_flight["attempt_count"] == 0

    async def delivered() -> list[dict[str, Any]]:
        return await _deliveries(api, key, endpoint["id"], status="delivered")

    (done,) = await wait_for(delivered, what="the late result")
    assert done["attempt_count"] == 1 and done["attempts"][0]["latency_ms"] >= 2000
    assert len(receiver.requests) == 1


async def test_disabled_and_deleted_endpoints(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver()
    witness = await make_receiver()
    key, project = await api.key()
    status, paused = await api.call("POST", "/v1/webhook_endpoints", key, json={"url": receiver.url, "enabled": False})
    assert status == 200
    await _endpoint(api, key, witness.url)
    await start_notifier()
    await batches.complete(project)
    await witness.wait_for(1)
    assert receiver.requests == []  # disabled: not even a delivery record
    assert await _deliveries(api, key, paused["id"]) == []

    status, _ = await api.call("POST", f"/v1/webhook_endpoints/{paused['id']}", key, json={"enabled": True})
    assert status == 200
    batch_id = await batches.complete(project)
    (request,) = await receiver.wait_for(1)
    assert unwrap(request, paused["signing_secret"]).data.id == batch_id

    status, deleted = await api.call("DELETE", f"/v1/webhook_endpoints/{paused['id']}", key)
    assert status == 200 and deleted == {"id": paused["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    status, _ = await api.call("GET", f"/v1/webhook_endpoints/{paused['id']}/deliveries", key)
    assert status == 404
    # its history stays readable project-wide
    status, page = await api.call("GET", "/v1/webhook_deliveries", key, params={"endpoint_id": paused["id"]})
    assert status == 200 and [d["batch_id"] for d in page["data"]] == [batch_id]


async def test_delivery_listing_pages_and_filters(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver()
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier()
    batch_ids = [await batches.complete(project) for _ in range(3)]
    await receiver.wait_for(3)

    async def all_recorded() -> list[dict[str, Any]]:
        found = await _deliveries(api, key, endpoint["id"], status="delivered")
        return found if len(found) == 3 else []

    everything = await wait_for(all_recorded, what="three recorded deliveries")
    assert {d["batch_id"] for d in everything} == set(batch_ids)
    first = await _deliveries(api, key, endpoint["id"], limit="2")
    rest = await _deliveries(api, key, endpoint["id"], limit="2", after=first[-1]["id"])
    assert [d["id"] for d in first + rest] == [d["id"] for d in everything]
    assert await _deliveries(api, key, endpoint["id"], status="dead") == []
    status, page = await api.call("GET", "/v1/webhook_deliveries", key, params={"batch_id": batch_ids[0]})
    assert status == 200 and [d["batch_id"] for d in page["data"]] == [batch_ids[0]]
    status, error = await api.call("GET", "/v1/webhook_deliveries", key)
    assert status == 400 and error["error"]["code"] == "missing_required_parameter"
    status, error = await api.call("GET", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", key,
                                   params={"status": "lost"})
    assert status == 400 and error["error"]["param"] == "status"
    status, error = await api.call("POST", f"/v1/webhook_endpoints/{endpoint['id']}/deliveries/msg_nope/redeliver", key)
    assert status == 404 and error["error"]["code"] == "webhook_delivery_not_found"


async def test_deleting_an_endpoint_ends_its_pending_deliveries(
    api: Api, batches: Batches, make_receiver: MakeReceiver, start_notifier: StartNotifier
) -> None:
    receiver = await make_receiver(default=503)
    key, project = await api.key()
    endpoint = await _endpoint(api, key, receiver.url)
    await start_notifier(webhook_retry_base_seconds=60.0, webhook_retry_max_delay_seconds=120.0)
    batch_id = await batches.complete(project)

    async def retry_pending() -> list[dict[str, Any]]:
        found = await _deliveries(api, key, endpoint["id"], status="pending")
        return found if found and found[0]["attempt_count"] >= 1 else []

    await wait_for(retry_pending, what="a failed first attempt with a retry scheduled")
    status, _ = await api.call("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}", key)
    assert status == 200
    status, page = await api.call("GET", "/v1/webhook_deliveries", key, params={"batch_id": batch_id})
    (delivery,) = page["data"]
    assert delivery["status"] == "dead" and delivery["last_error"] == "the endpoint was deleted"
    assert delivery["next_retry_at"] is None
