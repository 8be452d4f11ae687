"""Real models through the whole service: SmolLM2-135M chat (llama.cpp) and all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio

from services.settings import Settings
from tests.support.lines import CHAT, EMBEDDINGS, chat_line, jsonl
from tests.support.models import CHAT_MODEL, EMBEDDINGS_MODEL, write_models_file
from tests.support.processes import ServiceStack, assert_exactly_once, download_lines, upload, wait_status
from tests.support.settings import fast_settings

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("cpu-models")
    s = fast_settings(module_settings, models_file=write_models_file(tmp / "models.toml", None),
                      llama_threads=1)
    st = ServiceStack(s, tmp / "logs")
    try:
        await st.start(workers=(CHAT_MODEL, EMBEDDINGS_MODEL))
        yield st
    finally:
        await st.close()


async def test_chat_model_batch(stack: ServiceStack) -> None:
    client = await stack.client()
    ids = ["greet", "count", "color", "bad"]
    lines = [
        chat_line("greet", model=CHAT_MODEL, max_tokens=8, temperature=0),
        chat_line("count", model=CHAT_MODEL, max_tokens=8, temperature=0,
                  messages=[{"role": "user", "content": "Count from 1 to 5."}]),
        chat_line("color", model=CHAT_MODEL, max_tokens=8, temperature=0,
                  messages=[{"role": "system", "content": "Answer in one word."},
                            {"role": "user", "content": "What color is the sky?"}]),
        chat_line("bad", model=CHAT_MODEL, max_tokens=-3),  # the engine refuses it: a per-line 400
    ]
    batch = await client.batches.create(input_file_id=await upload(client, jsonl(lines)), endpoint=CHAT,
                                        completion_window="24h")
    batch = await wait_status(client, batch.id, timeout_s=300)
    assert batch.status == "completed", batch.errors
    output = await download_lines(client, batch.output_file_id)
    errors = await download_lines(client, batch.error_file_id)
    assert_exactly_once(output, errors, ids)
    assert [o["custom_id"] for o in output] == ["greet", "count", "color"]
    for o in output:
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == CHAT_MODEL
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert 0 < body["usage"]["completion_tokens"] <= 8
    [err] = errors
    assert err["custom_id"] == "bad" and err["response"]["status_code"] == 400
    assert batch.usage.output_tokens == sum(o["response"]["body"]["usage"]["completion_tokens"] for o in output)
    assert batch.usage.input_tokens == sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in output)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)


async def test_embeddings_batch(stack: ServiceStack) -> None:
    client = await stack.client()
    texts = {"e0": "The cat sat on the mat.", "e1": "A feline rested on a rug.", "e2": "Stock markets fell today.",
             "e3": ["two", "inputs"]}
    lines = [orjson.dumps({"custom_id": cid, "method": "POST", "url": EMBEDDINGS,
                           "body": {"model": EMBEDDINGS_MODEL, "input": text}}) for cid, text in texts.items()]
    batch = await client.batches.create(input_file_id=await upload(client, jsonl(lines)), endpoint=EMBEDDINGS,
                                        completion_window="24h")
    batch = await wait_status(client, batch.id, timeout_s=300)
    assert batch.status == "completed", batch.errors
    output = await download_lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == list(texts)
    vectors = {}
    for o in output:
        body = o["response"]["body"]
        assert body["object"] == "list" and body["model"] == EMBEDDINGS_MODEL
        assert all(len(d["embedding"]) == 384 for d in body["data"])
        vectors[o["custom_id"]] = body["data"][0]["embedding"]
    assert len(output[3]["response"]["body"]["data"]) == 2

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    # Real embeddings: the paraphrase is closer than the unrelated sentence.
    assert cos(vectors["e0"], vectors["e1"]) > cos(vectors["e0"], vectors["e2"])
    assert batch.usage.input_tokens > 0 and batch.usage.output_tokens == 0
