"""BatchStore on the real MongoDB wire server: CAS transitions, outbox entries, listing, filters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from schemas.openai_objects import Batch
from services.settings import Settings
from services.state.batches import (
    BatchStore,
    CursorNotFound,
    new_batch_document,
    new_batch_id,
    to_api,
)
from services.stores.mongo import close_database, open_database


@pytest_asyncio.fixture(loop_scope="session")
async def store(settings: Settings) -> AsyncIterator[BatchStore]:
    db = open_database(settings)
    s = BatchStore(db)
    await s.ensure_indexes()
    yield s
    await close_database(db)


def make_doc(project: str = "p1", *, now: float | None = None, **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "project": project,
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-abc",
        "input": {"kind": "file", "key": "files/file-abc", "bytes": 10},
        "completion_window": "24h",
        "expires_in_s": 86400,
        "model": "batch-test-model",
        "now": now,
    }
    fields.update(kw)
    return new_batch_document(**fields)


def test_new_batch_id_shape() -> None:
    bid = new_batch_id()
    assert bid.startswith("batch_") and len(bid) == len("batch_") + 24
    int(bid.removeprefix("batch_"), 16)
    assert new_batch_id() != bid


def test_to_api_matches_openai_shape() -> None:
    doc = make_doc(now=1_700_000_000.75, metadata={"ds_name": "x"})
    api = to_api(doc)
    Batch.model_validate(api)
    assert api["id"] == doc["_id"] and api["object"] == "batch"
    assert api["created_at"] == 1_700_000_000 and api["expires_at"] == 1_700_086_400
    assert api["errors"] is None and api["usage"] is None and api["in_progress_at"] is None
    assert api["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert api["metadata"] == {"ds_name": "x"}
    assert "project" not in api and "outbox" not in api and "input" not in api

    doc["errors"] = [{"code": "invalid_json", "message": "bad", "param": None, "line": 3}]
    assert to_api(doc)["errors"] == {
        "object": "list", "data": [{"code": "invalid_json", "message": "bad", "param": None, "line": 3}]
    }


def test_new_document_has_created_event() -> None:
    doc = make_doc(now=1_700_000_000.0)
    [event] = doc["outbox"]
    assert event["id"] == f"{doc['_id']}.created" and event["type"] == "batch.created"
    assert event["subject"] == doc["_id"] and event["specversion"] == "1.0"
    assert event["data"] == to_api(doc)
    assert doc["outbox_at"] == 1_700_000_000.0


async def test_insert_get_and_project_isolation(store: BatchStore) -> None:
    doc = await store.insert(make_doc("p1"))
    assert (await store.get(doc["_id"]))["status"] == "validating"
    assert (await store.get(doc["_id"], "p1")) is not None
    assert (await store.get(doc["_id"], "p2")) is None
    assert (await store.get("batch_missing")) is None


async def test_transition_cas_event_and_timestamps(store: BatchStore) -> None:
    doc = await store.insert(make_doc())
    new = await store.transition(doc["_id"], "validating", "in_progress", set={"request_counts.total": 7})
    assert new is not None and new["status"] == "in_progress" and new["in_progress_at"] >= doc["created_at"]
    assert new["request_counts"] == {"total": 7, "completed": 0, "failed": 0}
    assert [e["type"] for e in new["outbox"]] == ["batch.created", "batch.in_progress"]
    # The event carries the batch exactly as it is after the write.
    assert new["outbox"][1]["data"] == to_api(new)
    assert new["outbox"][1]["id"] == f"{doc['_id']}.in_progress"

    # The CAS loses when the status is not the expected one.
    assert await store.transition(doc["_id"], "validating", "failed") is None
    # A status list: either of several sources.
    done = await store.transition(doc["_id"], ["validating", "in_progress"], "finalizing", event=False)
    assert done is not None and done["status"] == "finalizing" and len(done["outbox"]) == 2
    assert await store.transition("batch_missing", "validating", "failed") is None


async def test_transition_refuses_impossible_moves(store: BatchStore) -> None:
    doc = await store.insert(make_doc())
    with pytest.raises(ValueError):
        await store.transition(doc["_id"], "completed", "in_progress")
    with pytest.raises(ValueError):
        await store.transition(doc["_id"], "validating", "no_such_status")
    with pytest.raises(ValueError):
        await store.transition(doc["_id"], "validating", "failed", set={"status": "completed"})


async def test_racing_transitions_have_one_winner(store: BatchStore) -> None:
    doc = await store.insert(make_doc())
    await store.transition(doc["_id"], "validating", "in_progress")
    results = await asyncio.gather(
        store.transition(doc["_id"], "in_progress", "cancelling"),
        store.transition(doc["_id"], "in_progress", "finalizing"),
        store.update_fields(doc["_id"], {"request_counts.completed": 3}),
    )
    winners = [r for r in results[:2] if r is not None]
    assert len(winners) == 1
    final = await store.get(doc["_id"])
    assert final["status"] == winners[0]["status"]
    # Exactly one of the two status events made it into the outbox.
    types = [e["type"] for e in final["outbox"]]
    assert sorted(set(types) & {"batch.cancelling", "batch.finalizing"}) == [f"batch.{final['status']}"]


async def test_update_fields_and_progress(store: BatchStore) -> None:
    doc = await store.insert(make_doc())
    new = await store.update_fields(doc["_id"], {"chunks_total": 4, "request_counts": {"total": 9}})
    assert new["chunks_total"] == 4 and new["rev"] == doc["rev"] + 1
    assert await store.update_fields(doc["_id"], {"chunks_total": 5}, only_status="in_progress") is None
    assert (await store.get(doc["_id"]))["chunks_total"] == 4
    with pytest.raises(ValueError):
        await store.update_fields(doc["_id"], {"status": "failed"})

    prog = await store.update_fields(doc["_id"], {"request_counts.completed": 2}, progress_seq=1)
    assert prog["outbox"][-1]["id"] == f"{doc['_id']}.progress.1"
    assert prog["outbox"][-1]["data"]["request_counts"]["completed"] == 2
    again = await store.push_progress(doc["_id"], 2)
    assert again["outbox"][-1]["id"] == f"{doc['_id']}.progress.2"
    assert again["outbox"][-1]["data"] == to_api(again)
    assert await store.push_progress("batch_missing", 1) is None


async def test_pull_outbox_clears_outbox_at(store: BatchStore) -> None:
    doc = await store.insert(make_doc())
    new = await store.transition(doc["_id"], "validating", "in_progress")
    ids = [e["id"] for e in new["outbox"]]
    half = await store.pull_outbox(doc["_id"], ids[:1])
    assert [e["id"] for e in half["outbox"]] == ids[1:]
    assert (await store.get(doc["_id"]))["outbox_at"] == doc["outbox_at"]
    await store.pull_outbox(doc["_id"], ids[1:])
    cleared = await store.get(doc["_id"])
    assert cleared["outbox"] == [] and "outbox_at" not in cleared
    # A new event sets outbox_at again.
    cancelled = await store.transition(doc["_id"], "in_progress", "cancelling")
    assert cancelled["outbox_at"] >= doc["outbox_at"]


async def test_stale_outbox_scan(store: BatchStore) -> None:
    old = await store.insert(make_doc(now=1_000.0))
    fresh = await store.insert(make_doc())
    found = [d["_id"] for d in await store.with_stale_outbox(5.0)]
    assert old["_id"] in found and fresh["_id"] not in found


async def test_list_paging_and_filters(store: BatchStore) -> None:
    base = 1_700_000_000.0
    docs = []
    for i in range(7):
        docs.append(await store.insert(make_doc(
            "p1", now=base + i * 10,
            metadata={"ds_name": f"set-{i % 2}-name"} if i < 6 else None,
            input_file_id=f"file-{i % 3}",
        )))
    await store.insert(make_doc("p2", now=base + 100))
    newest_first = [d["_id"] for d in reversed(docs)]

    page, more = await store.list("p1", limit=3)
    assert [d["_id"] for d in page] == newest_first[:3] and more
    assert "outbox" not in page[0]
    page2, more2 = await store.list("p1", limit=3, after=page[-1]["_id"])
    assert [d["_id"] for d in page2] == newest_first[3:6] and more2
    page3, more3 = await store.list("p1", limit=3, after=page2[-1]["_id"])
    assert [d["_id"] for d in page3] == newest_first[6:] and not more3
    with pytest.raises(CursorNotFound):
        await store.list("p2", after=page[0]["_id"])

    await store.transition(docs[0]["_id"], "validating", "failed")
    await store.transition(docs[1]["_id"], "validating", "in_progress")
    assert [d["_id"] for d in (await store.list("p1", statuses=["failed"]))[0]] == [docs[0]["_id"]]
    both = (await store.list("p1", statuses=["failed", "in_progress"]))[0]
    assert {d["_id"] for d in both} == {docs[0]["_id"], docs[1]["_id"]}

    named = (await store.list("p1", ds_name="set-1"))[0]
    assert [d["_id"] for d in named] == [docs[5]["_id"], docs[3]["_id"], docs[1]["_id"]]
    assert (await store.list("p1", ds_name="set.1"))[0] == []  # substring, not a pattern

    by_file = (await store.list("p1", input_file_ids=["file-0", "file-2"]))[0]
    assert {d["_id"] for d in by_file} == {docs[i]["_id"] for i in (0, 2, 3, 5, 6)}

    window = (await store.list("p1", create_after=base + 20, create_before=base + 40))[0]
    assert [d["_id"] for d in window] == [docs[3]["_id"], docs[2]["_id"]]


async def test_list_orders_batches_created_in_the_same_second(store: BatchStore) -> None:
    same = [await store.insert(make_doc("p3", now=1_700_000_000.0)) for _ in range(4)]
    ids = sorted((d["_id"] for d in same), reverse=True)
    first, more = await store.list("p3", limit=2)
    rest, more2 = await store.list("p3", limit=2, after=first[-1]["_id"])
    assert [d["_id"] for d in first + rest] == ids and more and not more2


async def test_count_running(store: BatchStore) -> None:
    a = await store.insert(make_doc("p1"))
    await store.insert(make_doc("p1"))
    await store.insert(make_doc("p1", model="other"))
    await store.insert(make_doc("p2"))
    assert await store.count_running("p1", "batch-test-model") == 2
    await store.transition(a["_id"], "validating", "failed")
    assert await store.count_running("p1", "batch-test-model") == 1
    assert await store.delete(a["_id"]) and not await store.delete(a["_id"])
