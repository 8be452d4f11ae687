"""The Batches API over HTTP with the official openai SDK, on the real MongoDB, S3 and Kafka.

No dispatcher runs here, so new batches stay `validating`; later statuses are set through the
store, as the dispatcher would.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from tests.support.api import Api, MakeApi
from tests.support.lines import request_lines

# Loopback: the test settings allow private input URLs, and no dispatcher fetches it here.
URL_INPUT = "http://127.0.0.1:9/data/requests.jsonl"


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y%m%d%H%M%S")


async def create_raw(api: Api, key: str, **body: Any) -> tuple[int, Any]:
    return await api.call("POST", "/v1/batches", key, json=body)


async def test_create_and_retrieve_with_the_sdk(api: Api) -> None:
    key, project = await api.key()
    client = api.client(key)
    file_id = await api.add_file(project, request_lines(3))
    before = int(time.time())
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"ds_name": "nightly", "ds_description": "three lines"},
    )
    assert batch.id.startswith("batch_") and batch.object == "batch"
    assert batch.status == "validating" and batch.input_file_id == file_id
    assert batch.endpoint == "/v1/chat/completions" and batch.completion_window == "24h"
    assert batch.model == "batch-test-model"  # from the first line
    assert before <= batch.created_at <= int(time.time())
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.errors is None and batch.usage is None and batch.output_file_id is None
    assert batch.in_progress_at is None and batch.cancelling_at is None
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert batch.metadata == {"ds_name": "nightly", "ds_description": "three lines"}

    again = await client.batches.retrieve(batch.id)
    assert again == batch
    doc = await api.store.get(batch.id)
    assert doc["project"] == project and doc["input"]["kind"] == "file" and doc["input"]["bytes"] > 0
    # The created event went out and left the outbox.
    assert doc["outbox"] == [] and "outbox_at" not in doc


async def test_create_from_an_uploaded_file(api: Api) -> None:
    key, _ = await api.key()
    client = api.client(key)
    uploaded = await client.files.create(file=("in.jsonl", io.BytesIO(request_lines(2, model="null-model"))), purpose="batch")
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="2d")
    assert batch.model == "null-model" and batch.expires_at == batch.created_at + 48 * 3600


async def test_model_comes_from_the_first_non_blank_line(api: Api) -> None:
    key, project = await api.key()
    content = b"\n  \n" + request_lines(2, model="some-model")
    batch = await api.client(key).batches.create(
        input_file_id=await api.add_file(project, content), endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.model == "some-model"
    # An unreadable first line leaves the model unknown; the dispatcher reports the line.
    status, body = await create_raw(api, key, input_file_id=await api.add_file(project, b"{not json\n"),
                                    endpoint="/v1/chat/completions", completion_window="24h")
    assert status == 200 and body["model"] is None and body["status"] == "validating"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id", "missing_required_parameter"),
        ({"input_file_id": "F", "completion_window": "24h"}, "endpoint", "missing_required_parameter"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions"}, "completion_window", "missing_required_parameter"),
        ({"input_file_id": 12, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id",
         "invalid_value"),
        ({"input_file_id": "", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id",
         "invalid_value"),
        ({"input_file_id": "https://", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
         "input_file_id", "invalid_value"),
        ({"input_file_id": "F", "endpoint": "/v1/images/generations", "completion_window": "24h"}, "endpoint", "invalid_value"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": 24}, "completion_window",
         "invalid_value"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"k": 1}}, "metadata.k", "invalid_value"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": ["k"]}, "metadata", "invalid_value"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "metadata_too_many_pairs"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"k" * 65: "v"}}, "metadata", "metadata_key_too_long"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"$where": "v"}}, "metadata", "invalid_value"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"k": "v" * 513}}, "metadata", "metadata_value_too_long"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"ds_name": "n" * 101}}, "metadata", "metadata_value_too_long"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"ds_description": "d" * 201}}, "metadata", "metadata_value_too_long"),
    ],
)
async def test_create_validation_errors(api: Api, body: dict[str, Any], param: str, code: str) -> None:
    key, _ = await api.key()
    status, answer = await create_raw(api, key, **body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"]


@pytest.mark.parametrize("window", ["23h", "337h", "15d", "0d", "0h", "24", "h", "24m", "1.5d", "024h", " 24h", "24H"])
async def test_bad_completion_windows(api: Api, window: str) -> None:
    key, _ = await api.key()
    status, answer = await create_raw(api, key, input_file_id=URL_INPUT, endpoint="/v1/chat/completions",
                                      completion_window=window)
    assert status == 400 and answer["error"]["param"] == "completion_window"
    assert answer["error"]["code"] == "invalid_value"


@pytest.mark.parametrize(("window", "hours"), [("24h", 24), ("1d", 24), ("72h", 72), ("3d", 72), ("336h", 336),
                                               ("14d", 336)])
async def test_completion_windows_set_expires_at(api: Api, window: str, hours: int) -> None:
    key, _ = await api.key()
    batch = await api.client(key).batches.create(input_file_id=URL_INPUT, endpoint="/v1/embeddings",
                                                 completion_window=window)  # type: ignore[arg-type]
    assert batch.completion_window == window and batch.expires_at == batch.created_at + hours * 3600


async def test_window_override_setting(make_api: MakeApi) -> None:
    api = await make_api(batch_window_override_seconds=5)
    key, _ = await api.key()
    batch = await api.client(key).batches.create(input_file_id=URL_INPUT, endpoint="/v1/embeddings",
                                                 completion_window="24h")
    doc = await api.store.get(batch.id)
    assert doc["expires_at"] - doc["created_at"] == pytest.approx(5)
    assert batch.completion_window == "24h"


async def test_metadata_limits_are_inclusive(api: Api) -> None:
    key, _ = await api.key()
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(14)}
    metadata |= {"ds_name": "n" * 100, "ds_description": "d" * 200}
    assert len(metadata) == 16 and all(len(k) == 64 for k in metadata if not k.startswith("ds_"))
    batch = await api.client(key).batches.create(input_file_id=URL_INPUT, endpoint="/v1/embeddings",
                                                 completion_window="24h", metadata=metadata)
    assert batch.metadata == metadata


@pytest.mark.parametrize(
    "callback",
    ["http://127.0.0.1:9/hook", "http://10.0.0.7/hook", "http://169.254.169.254/latest", "ftp://example.com/x"],
)
async def test_private_or_odd_callback_urls_are_refused(api: Api, callback: str) -> None:
    key, _ = await api.key()
    status, body = await create_raw(api, key, input_file_id=URL_INPUT, endpoint="/v1/chat/completions",
                                    completion_window="24h", metadata={"callback_url": callback})
    assert status == 400
    assert body["error"]["param"] == "metadata.callback_url" and body["error"]["code"] == "url_not_allowed"


async def test_url_inputs(api: Api) -> None:
    key, _ = await api.key()
    client = api.client(key)
    batch = await client.batches.create(input_file_id=URL_INPUT, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    assert batch.input_file_id == URL_INPUT and batch.model is None  # known after validation
    doc = await api.store.get(batch.id)
    assert doc["input"] == {"kind": "url", "url": URL_INPUT}
    # Only batch-test-model serves the test endpoint, so its model is known at once.
    test = await client.batches.create(input_file_id="http://127.0.0.1:9/x.jsonl", endpoint="/v1/chat/ds-test",
                                       completion_window="24h")  # type: ignore[arg-type]
    assert test.model == "batch-test-model"


async def test_input_file_checks(api: Api) -> None:
    key, project = await api.key()
    other_key, other_project = await api.key()
    foreign = await api.add_file(other_project, request_lines(1))
    for file_id in (foreign, "file-doesnotexist"):
        status, answer = await create_raw(api, key, input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
        assert status == 404 and answer["error"]["param"] == "input_file_id"
        assert answer["error"]["code"] == "file_not_found" and file_id in answer["error"]["message"]
    wrong_purpose = await api.add_file(project, request_lines(1), purpose="fine-tune")
    status, answer = await create_raw(api, key, input_file_id=wrong_purpose, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    assert status == 400 and answer["error"]["param"] == "input_file_id"
    assert answer["error"]["code"] == "invalid_file_purpose"
    # The owner can use it.
    with pytest.raises(openai.NotFoundError):
        await api.client(key).batches.create(input_file_id=foreign, endpoint="/v1/chat/completions",
                                             completion_window="24h")
    ok = await api.client(other_key).batches.create(input_file_id=foreign, endpoint="/v1/chat/completions",
                                                    completion_window="24h")
    assert ok.status == "validating"


async def test_bodies_that_are_not_json_objects(api: Api) -> None:
    key, _ = await api.key()
    for data in (b"", b"{", b"[1]", b"null"):
        status, answer = await api.call("POST", "/v1/batches", key, data=data,
                                        headers={"Content-Type": "application/json"})
        assert status == 400 and answer["error"]["code"] == "invalid_json"


async def test_another_projects_batch_is_not_found(api: Api) -> None:
    key, project = await api.key()
    other_key, _ = await api.key()
    batch = await api.client(key).batches.create(input_file_id=await api.add_file(project, request_lines(1)),
                                                 endpoint="/v1/chat/completions", completion_window="24h")
    other = api.client(other_key)
    with pytest.raises(openai.NotFoundError):
        await other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await other.batches.cancel(batch.id)
    assert [b async for b in other.batches.list()] == []
    status, answer = await api.call("GET", f"/v1/batches/{batch.id}", other_key)
    assert status == 404 and answer["error"]["code"] == "batch_not_found"
    # The owner still sees it, unchanged by the foreign cancel.
    assert (await api.client(key).batches.retrieve(batch.id)).status == "validating"
    status, _ = await api.call("GET", "/v1/batches", "sk-oh-not-a-key")
    assert status == 401


async def test_list_paging(api: Api) -> None:
    key, _ = await api.key()
    client = api.client(key)
    created = [
        (await client.batches.create(input_file_id=URL_INPUT, endpoint="/v1/embeddings", completion_window="24h")).id
        for _ in range(5)
    ]
    newest_first = created[::-1]

    page = await client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2] and page.has_more
    status, raw = await api.call("GET", "/v1/batches?limit=2", key)
    assert status == 200 and raw["object"] == "list"
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (newest_first[0], newest_first[1], True)
    status, raw = await api.call("GET", f"/v1/batches?limit=2&after={newest_first[3]}", key)
    assert [b["id"] for b in raw["data"]] == newest_first[4:] and raw["has_more"] is False
    assert raw["first_id"] == raw["last_id"] == newest_first[4]

    # The SDK's auto-paging follows `after` through every page.
    assert [b.id async for b in client.batches.list(limit=2)] == newest_first
    assert [b.id async for b in client.batches.list(limit=100)] == newest_first
    status, raw = await api.call("GET", f"/v1/batches?after={newest_first[-1]}", key)
    assert raw == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"),
        ("after=batch_nope", "after"),
        ("status=done", "status"), ("status=failed,bogus", "status"),
        ("input_file_ids=" + ",".join(f"file-{i}" for i in range(21)), "input_file_ids"),
        ("ds_name=" + "n" * 101, "ds_name"),
        ("create_after=2025-01-01", "create_after"), ("create_after=20251301000000", "create_after"),
        ("create_before=2025010100000", "create_before"), ("create_before=20250101250000", "create_before"),
    ],
)
async def test_list_bad_parameters(api: Api, query: str, param: str) -> None:
    key, _ = await api.key()
    status, answer = await api.call("GET", f"/v1/batches?{query}", key)
    assert status == 400, answer
    assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"


async def test_list_filters(api: Api) -> None:
    key, project = await api.key()
    client = api.client(key)
    file_a = await api.add_file(project, request_lines(1, model="null-model"))
    file_b = await api.add_file(project, request_lines(1, model="null-model"))

    async def create(file_id: str, ds_name: str | None) -> str:
        metadata = {"ds_name": ds_name} if ds_name else None
        batch = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                            completion_window="24h", metadata=metadata)
        return batch.id

    nightly_a = await create(file_a, "nightly-eval")
    weekly_b = await create(file_b, "weekly-eval")
    plain_b = await create(file_b, None)
    url_batch = await create(URL_INPUT, "Nightly")
    await api.store.transition(nightly_a, "validating", "failed")
    await api.store.transition(weekly_b, "validating", "in_progress")

    async def ids(query: str) -> list[str]:
        status, body = await api.call("GET", f"/v1/batches?{query}", key)
        assert status == 200, body
        return [b["id"] for b in body["data"]]

    assert await ids("ds_name=eval") == [weekly_b, nightly_a]
    assert await ids("ds_name=nightly") == [nightly_a]  # case-sensitive substring
    assert await ids("ds_name=.*") == []  # literal text, not a pattern
    assert await ids(f"input_file_ids={file_b}") == [plain_b, weekly_b]
    assert await ids(f"input_file_ids={file_a},{URL_INPUT}") == [url_batch, nightly_a]
    assert await ids("status=failed") == [nightly_a]
    assert await ids("status=failed,in_progress") == [weekly_b, nightly_a]
    assert await ids("status=validating") == [url_batch, plain_b]
    assert await ids("status=completed") == []
    assert await ids("ds_name=eval&status=in_progress") == [weekly_b]

    doc = await api.store.get(url_batch)
    hour_ago, soon = stamp(time.time() - 3600), stamp(time.time() + 3600)
    assert await ids(f"create_after={hour_ago}") == [url_batch, plain_b, weekly_b, nightly_a]
    assert await ids(f"create_after={soon}") == []
    assert await ids(f"create_before={hour_ago}") == []
    assert await ids(f"create_after={hour_ago}&create_before={soon}&status=validating") == [url_batch, plain_b]
    # Bounds are to the second: [create_after, create_before).
    second = stamp(doc["created_at"])
    assert url_batch in await ids(f"create_after={second}")
    assert url_batch not in await ids(f"create_before={second}")
    # Filters through the SDK ride in extra_query.
    page = await client.batches.list(extra_query={"status": "failed,in_progress", "ds_name": "eval"})
    assert [b.id for b in page.data] == [weekly_b, nightly_a]


async def test_cancel(api: Api) -> None:
    key, _ = await api.key()
    client = api.client(key)

    async def new() -> str:
        return (await client.batches.create(input_file_id=URL_INPUT, endpoint="/v1/embeddings",
                                            completion_window="24h")).id

    validating = await new()
    cancelled = await client.batches.cancel(validating)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    again = await client.batches.cancel(validating)  # idempotent
    assert again.status == "cancelling" and again.cancelling_at == cancelled.cancelling_at

    running = await new()
    await api.store.transition(running, "validating", "in_progress")
    assert (await client.batches.cancel(running)).status == "cancelling"

    for path in (["in_progress", "finalizing"], ["in_progress", "finalizing", "completed"], ["failed"]):
        batch_id = await new()
        previous = "validating"
        for status in path:
            await api.store.transition(batch_id, previous, status)
            previous = status
        code, answer = await api.call("POST", f"/v1/batches/{batch_id}/cancel", key)
        assert code == 400 and answer["error"]["code"] == "batch_not_cancellable", answer
        assert previous in answer["error"]["message"]
        assert (await client.batches.retrieve(batch_id)).status == previous
    with pytest.raises(openai.NotFoundError):
        await client.batches.cancel("batch_000000000000000000000000")


async def test_test_model_limits(api: Api) -> None:
    key, project = await api.key()
    client = api.client(key)
    too_big = await api.add_file(project, request_lines(1) + b" " * (api.settings.test_model_max_file_bytes + 1) + b"\n")
    status, answer = await create_raw(api, key, input_file_id=too_big, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    assert status == 400 and answer["error"]["code"] == "file_too_large"
    assert answer["error"]["param"] == "input_file_id"
    # The zero-cost model with the same engine has no such limit.
    big_null = await api.add_file(project, request_lines(1, model="null-model") + b" " * (1024 * 1024 + 1) + b"\n")
    assert (await client.batches.create(input_file_id=big_null, endpoint="/v1/chat/completions",
                                        completion_window="24h")).model == "null-model"

    small = await api.add_file(project, request_lines(2))
    first = await client.batches.create(input_file_id=small, endpoint="/v1/chat/completions", completion_window="24h")
    # The test endpoint is served by the test model only: it counts against the same limit.
    await client.batches.create(input_file_id=URL_INPUT, endpoint="/v1/chat/ds-test",  # type: ignore[arg-type]
                                completion_window="24h")
    with pytest.raises(openai.RateLimitError) as refused:
        await client.batches.create(input_file_id=small, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.code == "too_many_running_batches"
    # The refused batch left nothing behind.
    assert len([b async for b in client.batches.list()]) == 3
    # Other projects have their own allowance.
    other_key, other_project = await api.key()
    other_file = await api.add_file(other_project, request_lines(2))
    await api.client(other_key).batches.create(input_file_id=other_file, endpoint="/v1/chat/completions",
                                               completion_window="24h")
    # Once one ends, there is room again.
    await api.store.transition(first.id, "validating", "failed")
    third = await client.batches.create(input_file_id=small, endpoint="/v1/chat/completions", completion_window="24h")
    assert third.status == "validating"
