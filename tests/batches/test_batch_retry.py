"""`POST /v1/batches/{id}/retry` and `output_expires_after` over HTTP, on the real MongoDB, S3 and Kafka.

No dispatcher runs here: a batch is ended through the store and its error file written and
registered the way finalize does it (the whole flow with real processes is tests/e2e/test_batch_retry.py).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types import Batch

from schemas.batch_lines import error_line
from schemas.work import line_id
from services.dispatcher.finalize import output_file_id
from services.state.files import FileStore, object_key
from tests.support.api import Api
from tests.support.lines import CHAT, chat_line, jsonl

# The failed lines of the batch below by input line number: (custom_id, error code, answer status or None).
FAILURES: dict[int, tuple[str, str, int | None]] = {
    2: ("c-2", "batch_cancelled", None),
    3: ("c-3", "invalid_body", None),
    5: ("c-5", "upstream_http_503", 503),
    6: ("c-6", "upstream_http_400", 400),
    7: ("c-7", "engine_error", 500),
    8: ("c-8", "upstream_http_429", 429),
    9: ("c-9", "engine_unavailable", None),
    10: ("c-10", "upstream_http_404", 404),
}
RETRIABLE = [2, 5, 7, 8, 9]
LINES = 10


def input_file() -> tuple[bytes, dict[int, bytes]]:
    """Ten request lines (line 4 blank, so line numbers and request counts differ), by line number."""
    by_number = {n: chat_line(f"c-{n}", model="null-model", max_tokens=n) for n in range(1, LINES + 1) if n != 4}
    return b"".join(by_number.get(n, b"") + b"\n" for n in range(1, LINES + 1)), by_number


def error_file(batch_id: str, failures: dict[int, tuple[str, str, int | None]]) -> bytes:
    out = []
    for number, (custom_id, code, status) in sorted(failures.items()):
        response = None if status is None else {"status_code": status, "request_id": f"req-{number}",
                                                 "body": {"error": {"message": "x", "code": code}}}
        out.append(orjson.dumps(error_line(line_id(batch_id, number), custom_id, code, f"line {number} failed",
                                           line=number, response=response)))
    return jsonl(out)


async def end_batch(api: Api, batch_id: str, status: str, failures: dict[int, tuple[str, str, int | None]]) -> None:
    """Move a `validating` batch to `status` as the dispatcher would, with an error file of `failures`."""
    doc = await api.store.get(batch_id)
    assert doc is not None
    err_id = None
    if failures:
        err_id = output_file_id(batch_id, "error")
        data = error_file(batch_id, failures)
        await api.objects.put_bytes(object_key(err_id), data)
        await FileStore(api.db, api.objects).register_existing(
            doc["project"], object_key(err_id), f"{batch_id}_error.jsonl", "batch_output", len(data), file_id=err_id)
    await api.store.transition(batch_id, "validating", "in_progress")
    if status == "cancelled":
        await api.store.transition(batch_id, "in_progress", "cancelling")
        await api.store.transition(batch_id, "cancelling", "cancelled", set={
            "error_file_id": err_id, "request_counts": {"total": 9, "completed": 9 - len(failures),
                                                        "failed": len(failures)}})
    else:
        await api.store.transition(batch_id, "in_progress", "finalizing")
        await api.store.transition(batch_id, "finalizing", status, set={
            "error_file_id": err_id, "request_counts": {"total": 9, "completed": 9 - len(failures),
                                                        "failed": len(failures)}})


async def retry(api: Api, key: str, batch_id: str) -> tuple[int, Any]:
    return await api.call("POST", f"/v1/batches/{batch_id}/retry", key)


async def test_retry_takes_only_the_retriable_lines(api: Api) -> None:
    key, project = await api.key()
    client = api.client(key)
    data, by_number = input_file()
    file_id = await api.add_file(project, data)
    original = await client.batches.create(
        input_file_id=file_id, endpoint=CHAT, completion_window="48h", metadata={"ds_name": "nightly"},
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    await end_batch(api, original.id, "cancelled", FAILURES)

    # With the SDK: the route is an extension, so through the client's generic `post`.
    retried = await client.post(f"/batches/{original.id}/retry", cast_to=Batch)
    assert retried.id != original.id and retried.status == "validating"
    assert (retried.endpoint, retried.completion_window, retried.model) == (CHAT, "48h", "null-model")
    assert retried.metadata == {"ds_name": "nightly", "retry_of": original.id}
    assert retried.model_extra is not None
    assert retried.model_extra["output_expires_after"] == {"anchor": "created_at", "seconds": 7200}
    # The new input holds exactly the retriable lines, byte for byte, in input order.
    content = await client.files.content(retried.input_file_id)
    assert content.content == jsonl(by_number[n] for n in RETRIABLE)
    meta = await client.files.retrieve(retried.input_file_id)
    assert meta.purpose == "batch" and meta.filename == f"{original.id}_retry.jsonl"
    assert meta.expires_at == meta.created_at + api.settings.files_batch_default_expires_seconds

    linked = await client.batches.retrieve(original.id)
    assert linked.model_extra is not None and linked.model_extra["retried_by"] == retried.id
    # A retry of a retry, once that one ended: the original names its newest retry.
    await end_batch(api, retried.id, "expired", {1: ("c-2", "batch_expired", None)})  # its line 1
    again = await client.post(f"/batches/{retried.id}/retry", cast_to=Batch)
    assert again.metadata == {"ds_name": "nightly", "retry_of": retried.id}
    assert (await client.files.content(again.input_file_id)).content == jsonl([by_number[2]])
    status, body = await api.call("GET", f"/v1/batches/{retried.id}", key)
    assert status == 200 and body["retried_by"] == again.id


async def test_retry_refusals(api: Api) -> None:
    key, project = await api.key()
    client = api.client(key)
    data, _ = input_file()

    async def batch(status: str | None, failures: dict[int, tuple[str, str, int | None]]) -> str:
        created = await client.batches.create(input_file_id=await api.add_file(project, data), endpoint=CHAT,
                                              completion_window="24h")
        if status is not None:
            await end_batch(api, created.id, status, failures)
        return created.id

    running = await batch(None, {})
    status, body = await retry(api, key, running)
    assert status == 409 and body["error"]["code"] == "batch_not_ended"
    assert "'validating'" in body["error"]["message"]

    only_bad = {n: f for n, f in FAILURES.items() if n not in RETRIABLE}
    files_before = len((await client.files.list(purpose="batch")).data)
    no_retriable = await batch("completed", only_bad)
    status, body = await retry(api, key, no_retriable)
    assert status == 400 and body["error"]["code"] == "nothing_to_retry"
    assert "validation errors and other 4xx" in body["error"]["message"]
    # Nothing was left behind: the only new batch file is that batch's own input.
    assert len((await client.files.list(purpose="batch")).data) == files_before + 1

    all_good = await batch("completed", {})
    status, body = await retry(api, key, all_good)
    assert status == 400 and body["error"]["code"] == "nothing_to_retry"

    failed = await batch(None, {})
    await api.store.transition(failed, "validating", "failed")
    status, body = await retry(api, key, failed)
    assert status == 400 and body["error"]["code"] == "nothing_to_retry" and "validation" in body["error"]["message"]

    # The input file is gone: nothing to read the lines from.
    gone = await batch("cancelled", FAILURES)
    input_id = (await client.batches.retrieve(gone)).input_file_id
    await client.files.delete(input_id)
    status, body = await retry(api, key, gone)
    assert status == 400 and body["error"]["code"] == "input_unavailable" and input_id in body["error"]["message"]

    other_key, _ = await api.key()
    ended = await batch("cancelled", FAILURES)
    status, body = await retry(api, other_key, ended)
    assert status == 404 and body["error"]["code"] == "batch_not_found"
    status, body = await retry(api, key, "batch_000000000000000000000000")
    assert status == 404
    assert (await client.batches.retrieve(ended)).model_extra == {"output_expires_after": None, "retried_by": None}


async def test_url_input_batches_cannot_be_retried(api: Api) -> None:
    key, _ = await api.key()
    status, body = await api.call("POST", "/v1/batches", key, json={
        "input_file_id": "http://127.0.0.1:9/in.jsonl", "endpoint": CHAT, "completion_window": "24h"})
    assert status == 200
    await end_batch(api, body["id"], "expired", FAILURES)
    status, body = await retry(api, key, body["id"])
    assert status == 400 and body["error"]["code"] == "input_unavailable" and "URL" in body["error"]["message"]


@pytest.mark.parametrize(("value", "param", "code"), [
    ({"anchor": "created_at", "seconds": 3599}, "output_expires_after.seconds", "invalid_value"),
    ({"anchor": "created_at", "seconds": 2_592_001}, "output_expires_after.seconds", "invalid_value"),
    ({"anchor": "created_at", "seconds": "3600"}, "output_expires_after.seconds", "invalid_value"),
    ({"anchor": "completed_at", "seconds": 3600}, "output_expires_after.anchor", "invalid_value"),
    ({"seconds": 3600}, "output_expires_after.anchor", "missing_required_parameter"),
    ({"anchor": "created_at"}, "output_expires_after.seconds", "missing_required_parameter"),
    ("1h", "output_expires_after", "invalid_value"),
])
async def test_output_expires_after_validation(api: Api, value: Any, param: str, code: str) -> None:
    key, project = await api.key()
    file_id = await api.add_file(project, jsonl([chat_line("a")]))
    status, body = await api.call("POST", "/v1/batches", key, json={
        "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", "output_expires_after": value})
    assert status == 400, body
    assert (body["error"]["param"], body["error"]["code"]) == (param, code)


@pytest.mark.parametrize("seconds", [3600, 2_592_000])
async def test_output_expires_after_is_stored_and_returned(api: Api, seconds: int) -> None:
    key, project = await api.key()
    file_id = await api.add_file(project, jsonl([chat_line("a")]))
    status, body = await api.call("POST", "/v1/batches", key, json={
        "input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h",
        "output_expires_after": {"anchor": "created_at", "seconds": seconds}})
    assert status == 200 and body["output_expires_after"] == {"anchor": "created_at", "seconds": seconds}
    doc = await api.store.get(body["id"])
    assert doc is not None and doc["output_expires_after"] == {"anchor": "created_at", "seconds": seconds}
    status, listed = await api.call("GET", "/v1/batches", key)
    assert listed["data"][0]["output_expires_after"] == {"anchor": "created_at", "seconds": seconds}


async def test_retry_is_in_the_openapi_document(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200
    entry = doc["paths"]["/v1/batches/{batch_id}/retry"]["post"]
    assert entry["operationId"] == "retry_batch_handler" and "200" in entry["responses"]
    assert [p["name"] for p in entry["parameters"]] == ["batch_id"]
    create = doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    props = doc["components"]["schemas"][create["$ref"].rsplit("/", 1)[1]]["properties"]
    assert "output_expires_after" in props
    batch = doc["components"]["schemas"]["Batch"]["properties"]
    assert {"output_expires_after", "retried_by"} <= set(batch)
