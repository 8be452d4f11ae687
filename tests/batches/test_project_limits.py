"""Sharing one service: per-project limits at create, the input URL check, and bounded batch objects,
over HTTP on the real MongoDB, S3 and Kafka (with the real dispatcher and a worker where a batch must run)."""

from __future__ import annotations

from typing import Any

import orjson

from schemas.openai_objects import BATCH_OBJECT_MAX_BYTES
from services.state.projects import ProjectStore
from tests.support.api import Api, MakeApi
from tests.support.lines import CHAT, chat_line, jsonl, request_lines
from tests.support.stack import Stack


async def _create(api: Api, key: str, input_file_id: str, **extra: Any) -> tuple[int, Any]:
    body = {"input_file_id": input_file_id, "endpoint": CHAT, "completion_window": "24h", **extra}
    return await api.call("POST", "/v1/batches", key, json=body)


async def test_input_urls_to_private_addresses_are_refused_at_create(make_api: MakeApi) -> None:
    api = await make_api(input_url_allow_private=False)
    key, _ = await api.key()
    for url in ("http://127.0.0.1:8000/internal-admin", "http://10.1.2.3/in.jsonl", "http://[::1]:9/x",
                "http://169.254.169.254/latest/meta-data"):
        status, body = await _create(api, key, url)
        assert status == 400, body
        error = body["error"]
        assert error["code"] == "url_not_allowed" and error["param"] == "input_file_id"
        assert error["type"] == "invalid_request_error"
        # It says what kind of address, never which one.
        for secret in ("127.0.0.1", "10.1.2.3", "::1", "169.254", "8000"):
            assert secret not in error["message"], error["message"]
    assert [b async for b in api.client(key).batches.list()] == []
    # The operator's input allowlist opens it (and only for inputs).
    allowed = await make_api(input_url_allow_private=False, input_url_allowlist=["127.0.0.1/32"])
    key, _ = await allowed.key()
    status, body = await _create(allowed, key, "http://127.0.0.1:9/in.jsonl")
    assert status == 200 and body["status"] == "validating"


async def test_malformed_callback_urls_are_a_400(api: Api) -> None:
    key, project = await api.key()
    file_id = await api.add_file(project, request_lines(1, model="null-model"))
    for callback in ("http://example.com:99999/", "http://:80/x", "http:///x", "http://exa mple.com/",
                     "http://[::1/x"):
        status, body = await _create(api, key, file_id, metadata={"callback_url": callback})
        assert status == 400, (callback, body)
        assert body["error"]["param"] == "metadata.callback_url" and body["error"]["code"] == "invalid_url"
    # A malformed input URL is the same kind of 400, not a 500.
    status, body = await _create(api, key, "http://example.com:99999/in.jsonl")
    assert status == 400 and body["error"]["param"] == "input_file_id"


async def test_running_batches_per_project(make_api: MakeApi) -> None:
    api = await make_api(project_max_running_batches=2)
    key, project = await api.key()
    file_id = await api.add_file(project, request_lines(1, model="null-model"))
    first = await _create(api, key, file_id)
    second = await _create(api, key, file_id)
    assert first[0] == second[0] == 200
    status, body = await _create(api, key, file_id)
    assert status == 429 and body["error"]["code"] == "too_many_running_batches"
    assert "project_max_running_batches" in body["error"]["message"] and " 2 " in body["error"]["message"]
    assert len([b async for b in api.client(key).batches.list()]) == 2
    # URL inputs count too, and so do batches in every not-ended status.
    await api.store.transition(first[1]["id"], "validating", "in_progress")
    await api.store.transition(first[1]["id"], "in_progress", "finalizing")
    status, _ = await _create(api, key, "http://127.0.0.1:9/in.jsonl")
    assert status == 429
    # Another project has its own allowance.
    other_key, other_project = await api.key()
    assert (await _create(api, other_key, await api.add_file(other_project, request_lines(1))))[0] == 200
    # Once one ends, there is room again.
    await api.store.transition(second[1]["id"], "validating", "cancelled")
    status, body = await _create(api, key, file_id)
    assert status == 200 and body["status"] == "validating"


async def test_the_test_model_limit_holds_whatever_the_first_line_holds(api: Api) -> None:
    key, project = await api.key()
    not_an_object = orjson.dumps({"custom_id": "x", "method": "POST", "url": CHAT, "body": "not an object"})
    no_model = orjson.dumps({"custom_id": "y", "method": "POST", "url": CHAT, "body": {"messages": []}})
    content = jsonl([not_an_object, b"[1, 2]", b"{broken", no_model]) + request_lines(3)
    file_id = await api.add_file(project, content)
    created = [await _create(api, key, file_id) for _ in range(4)]
    assert [status for status, _ in created] == [200, 200, 429, 429]
    assert all(body["model"] == "batch-test-model" for _, body in created[:2])
    assert created[2][1]["error"]["code"] == "too_many_running_batches"
    assert "test_model_max_running" in created[2][1]["error"]["message"]


async def test_worst_case_batch_object_over_http(api: Api) -> None:
    key, _ = await api.key()
    astral = "\U0001f600"
    metadata = {f"{i:02d}" + astral * 62: astral * 512 for i in range(16)}
    url = "http://127.0.0.1:9/" + astral * (2048 - len("http://127.0.0.1:9/"))
    status, created = await _create(api, key, url, metadata=metadata)
    assert status == 200, created
    bad = "M" * 2_000_000  # stored three times over: well within MongoDB's 16 MB document
    errors = [{"code": "invalid_method", "message": f"line {i}: method must be \"POST\", got {bad!r}",
               "param": "method", "line": i} for i in range(3)]
    await api.store.transition(created["id"], "validating", "failed", set={"errors": errors, "model": bad})
    async with api.http.get(f"{api.url}/v1/batches/{created['id']}", headers={"Authorization": f"Bearer {key}"}) as r:
        raw = await r.read()
    assert r.status == 200 and len(raw) < BATCH_OBJECT_MAX_BYTES, len(raw)
    obj = orjson.loads(raw)
    assert obj["metadata"] == metadata and obj["input_file_id"] == url and obj["errors"]["data"]
    async with api.http.get(f"{api.url}/v1/batches", headers={"Authorization": f"Bearer {key}"}) as r:
        listed = orjson.loads(await r.read())
    assert len(orjson.dumps(listed["data"][0])) < BATCH_OBJECT_MAX_BYTES


async def test_five_megabyte_strings_in_bad_lines(stack: Stack, make_api: MakeApi) -> None:
    """The real dispatcher fails the batch with bounded errors, and the next batch runs."""
    await stack.start_worker("null-model")
    await stack.start_dispatcher()
    api = await make_api()
    key, project = await api.key()
    good = chat_line("ok-0")
    bad = [orjson.dumps({**orjson.loads(chat_line(f"bad-{i}")), "method": "M" * 5_000_000}) for i in range(3)]
    client = api.client(key)
    batch = await client.batches.create(input_file_id=await api.add_file(project, jsonl([good, *bad])),
                                        endpoint=CHAT, completion_window="24h")
    assert batch.model == "null-model"
    await stack.wait_status(batch.id)
    async with api.http.get(f"{api.url}/v1/batches/{batch.id}", headers={"Authorization": f"Bearer {key}"}) as r:
        raw = await r.read()
    obj = orjson.loads(raw)
    assert obj["status"] == "failed" and len(raw) < BATCH_OBJECT_MAX_BYTES, (obj["status"], len(raw))
    assert [e["code"] for e in obj["errors"]["data"]] == ["invalid_method"] * 3
    assert all("[cut: 5000000 characters]" in e["message"] for e in obj["errors"]["data"])
    # The next batch (same model, same events partition) runs to the end.
    after = await client.batches.create(
        input_file_id=await api.add_file(project, jsonl(chat_line(f"n-{i}") for i in range(5))),
        endpoint=CHAT, completion_window="24h",
    )
    done = await stack.wait_status(after.id)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 5


async def test_enqueued_requests_quota_is_a_429_and_is_given_back(make_api: MakeApi) -> None:
    """The operator's max_enqueued (offhours projects set) holds at create, counted in request lines."""
    api = await make_api()
    key, project = await api.key()
    projects = ProjectStore(api.db, api.settings)
    await projects.set(project, max_enqueued=5)
    client = api.client(key)
    three = await client.files.create(file=("three.jsonl", request_lines(3, model="null-model")), purpose="batch")
    first = await _create(api, key, three.id)
    assert first[0] == 200, first
    # Planned by the dispatcher: 3 of 5 enqueued; 3 more would be 6.
    await api.store.update_fields(first[1]["id"], {"dispatch_plan": {"requests": 3, "model": "null-model"}})
    status, body = await _create(api, key, three.id)
    assert status == 429 and body["error"]["code"] == "too_many_enqueued_requests", body
    assert "max_enqueued" in body["error"]["message"] and "5" in body["error"]["message"]
    # Another project is not held to it.
    other_key, _ = await api.key()
    other_file = await api.client(other_key).files.create(file=("o.jsonl", request_lines(3, model="null-model")),
                                                          purpose="batch")
    assert (await _create(api, other_key, other_file.id))[0] == 200
    # Lines that finish give the quota back.
    await api.store.transition(first[1]["id"], "validating", "in_progress",
                               set={"request_counts": {"total": 3, "completed": 3, "failed": 0}})
    status, body = await _create(api, key, three.id)
    assert status == 200, body


async def test_a_projects_own_max_running_replaces_the_default(make_api: MakeApi) -> None:
    api = await make_api(project_max_running_batches=5)
    key, project = await api.key()
    await ProjectStore(api.db, api.settings).set(project, max_running=1)
    file_id = await api.add_file(project, request_lines(1, model="null-model"))
    assert (await _create(api, key, file_id))[0] == 200
    status, body = await _create(api, key, file_id)
    assert status == 429 and body["error"]["code"] == "too_many_running_batches"
    assert " 1 " in body["error"]["message"]
