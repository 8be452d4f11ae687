"""`GET /v1/models` from worker heartbeat documents: fresh workers count, stale ones do not."""

from __future__ import annotations

import time

import openai
import pytest

from services.state.workers import WorkerStore, live_models
from tests.support.api import Api


async def test_models_with_live_workers(api: Api) -> None:
    key, _ = await api.key()
    workers = WorkerStore(api.db)
    now = time.time()
    liveness = api.settings.worker_liveness_seconds
    heartbeats = {
        "w1": {"model": "smollm2-135m", "endpoints": ["/v1/chat/completions"], "last_seen": now, "host": "a", "pid": 1},
        "w2": {"model": "smollm2-135m", "endpoints": ["/v1/completions", "/v1/chat/completions"],
               "last_seen": now - liveness / 2, "host": "b", "pid": 2},
        "w3": {"model": "org/embedder", "endpoints": ["/v1/embeddings"], "last_seen": now, "host": "a", "pid": 3},
        "w4": {"model": "gone-model", "endpoints": ["/v1/embeddings"], "last_seen": now - liveness - 1,
               "host": "c", "pid": 4},
    }
    for worker_id, fields in heartbeats.items():
        await workers.beat(worker_id, fields)
    client = api.client(key)
    page = await client.models.list()
    assert [m.id for m in page.data] == ["org/embedder", "smollm2-135m"]
    assert all(m.object == "model" and m.owned_by == "offhours" for m in page.data)

    status, body = await api.call("GET", "/v1/models", key)
    assert status == 200 and body["object"] == "list"
    smol = next(m for m in body["data"] if m["id"] == "smollm2-135m")
    assert smol["workers"] == 2 and smol["endpoints"] == ["/v1/chat/completions", "/v1/completions"]

    model = await client.models.retrieve("org/embedder")  # a "/" in the name still routes
    assert model.id == "org/embedder"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gone-model")
    status, body = await api.call("GET", "/v1/models/gone-model", key)
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"

    # The same helper the dispatcher uses; a later clock makes every heartbeat stale.
    assert set(await live_models(api.db, liveness)) == {"org/embedder", "smollm2-135m"}
    assert await live_models(api.db, liveness, now=now + liveness + 1) == {}
    for worker_id in heartbeats:
        await workers.remove(worker_id)
    assert (await client.models.list()).data == []
